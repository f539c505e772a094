"""report.html is one self-contained page: no script, nothing fetched, the data
escaped, every SVG chart well-formed, and the sections the issue asks for."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from intgrads_zmq.batch.report import render
from intgrads_zmq.batch.summary import summarize
from intgrads_zmq.batch.svg import bar_chart, hbar_chart, histogram

from .test_batch_summary import ROWS

HOSTILE = '<script>alert("x")</script><img src="http://example.com/t.png">'


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def page(rows=ROWS):
    rows = [*rows, {**ROWS[1], "id": "evil", "text": HOSTILE, "tokens": ["[CLS]", HOSTILE, "[SEP]"],
                    "attributions": [0.0, 1.0, 0.0], "timings": {"request_seconds": 99.0}}]
    run = {"input": "/data/reviews.jsonl", "request": {"options": {"n_steps": 8, "metrics": ["log_odds"]},
                                                       "fields": [], "model": "tiny"}}
    return render(summarize(rows, min_count=1), rows, run)


def test_self_contained_and_escaped():
    html = page()
    parser = _Tags()
    parser.feed(html)
    tags = {tag for tag, _ in parser.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "base"}, tags
    for tag, attrs in parser.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)  # no inline handlers
            assert name not in ("src", "href", "xlink:href"), (tag, name)
            assert "http" not in (value or ""), (tag, name, value)
    assert not re.search(r"url\(|@import", html)
    assert HOSTILE not in html and "&lt;script&gt;" in html  # the hostile text is shown, escaped


def test_sections_and_charts():
    html = page()
    for heading in ("Completeness", "Steps used", "Faithfulness", "Accuracy against the labels",
                    "Tokens with the largest mean attribution, per class", "Slowest examples", "Failed examples"):
        assert f">{heading}</h2>" in html, heading
    assert "<b>3 / 4</b>" in html  # the hand-made rows (2 / 3) and the copy of row 2 (right)
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) >= 8
    for svg in svgs:
        ET.fromstring(svg)  # well-formed (charts would not render otherwise)
    slowest = html.split(">Slowest examples</h2>")[1]
    assert slowest.index("evil") < slowest.index(">2<")  # 99 s first, then example 2 (2 s)


def test_charts_cope_with_degenerate_data():
    for svg in (histogram([], "t", "x"), histogram([0.0, 0.0], "t", "x", log=True), histogram([1.0, 1.0], "t", "x"),
                bar_chart([], "t", "x"), bar_chart([("8", 3.0)], "t", "x"), hbar_chart([], "t"),
                hbar_chart([("a", -1.0), ("b", 0.0), ("c", 2.0)], "t")):
        ET.fromstring(svg)
    assert "2 values of 0" in histogram([0.0, 0.0], "t", "x", log=True)
    bars = re.findall(r'<rect [^>]*height="([\d.]+)"', histogram([1.0, 2.0, 2.0, 3.0], "t", "x", bins=3))
    assert [float(h) for h in bars] == [73.0, 146.0, 73.0]  # counts 1 2 1, tallest = plot height


def test_a_run_without_labels_or_metrics_omits_those_sections():
    plain = [{k: v for k, v in r.items() if k not in ("label", "metrics")} for r in ROWS if "error" not in r]
    html = render(summarize(plain), plain, {"input": "x.txt", "request": {}})
    assert "Accuracy against" not in html and "Faithfulness" not in html and "Failed examples" not in html
    assert ">Completeness</h2>" in html
