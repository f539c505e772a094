"""``report.html``: the summary as one self-contained page.

Inline CSS and inline SVG only: no script, no stylesheet link, no font, no
image fetched, so the page can be mailed, archived or opened offline and
shows the same thing everywhere. Every string from the data is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from .rows import is_error
from .summary import METRIC_NAMES, metric_values, per_class_values
from .svg import bar_chart, fmt, hbar_chart, histogram

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1180px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:1em}.chart{background:#fafafa;border:1px solid #eee}
.chart .title{font-size:13px;font-weight:600}.chart .tick{font-size:10px;fill:#333}.chart .label{font-size:11px;fill:#333}
.note{color:#666;font-size:.9em}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, float):
                cells.append(f'<td class="num">{escape(fmt(cell))}</td>')
            elif isinstance(cell, int) and not isinstance(cell, bool):
                cells.append(f'<td class="num">{cell}</td>')
            else:
                cells.append(f"<td>{escape('' if cell is None else str(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _distribution_table(named: Sequence[tuple[str, dict[str, Any] | None]]) -> str:
    keys = ("count", "mean", "min", "p10", "median", "p90", "p99", "max")
    rows = [[name, *[d.get(k) for k in keys]] for name, d in named if d]
    return _table(["", *keys], rows) if rows else '<p class="note">no values</p>'


def render(summary: dict[str, Any], rows: list[dict[str, Any]], run: dict[str, Any]) -> str:
    """The whole page."""
    ok = [r for r in rows if not is_error(r)]
    parts = [f"<h1>intgrads-batch report: {escape(str(run.get('input', '')))}</h1>", _overview(summary, run)]
    parts.append(_completeness(summary, ok))
    parts.append(_steps(summary))
    if summary.get("metrics"):
        parts.append(_faithfulness(summary, ok))
    if summary.get("accuracy"):
        parts.append(_accuracy(summary["accuracy"]))
    parts.append(_top(summary["top"]))
    parts.append(_slowest(summary["slowest"], summary))
    if summary.get("failed"):
        parts.append(_failures(summary, rows))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>intgrads-batch report</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def _overview(summary: dict[str, Any], run: dict[str, Any]) -> str:
    request = run.get("request") or {}
    options = ", ".join(f"{k}={v}" for k, v in sorted((request.get("options") or {}).items())) or "server defaults"
    rows = [["examples", summary["examples"]], ["explained", summary["ok"]], ["failed", summary["failed"]],
            ["model", request.get("model")], ["labels", ", ".join(map(str, summary.get("labels") or []))],
            ["options", options], ["tensors kept", ", ".join(request.get("fields") or []) or "none"],
            ["predicted", ", ".join(f"{k}: {v}" for k, v in summary.get("predicted", {}).items())]]
    timings = summary.get("timings") or {}
    if timings.get("request_seconds"):
        rows.append(["mean request seconds", timings["request_seconds"]["mean"]])
    return "<h2>Run</h2>" + _table(["", ""], rows)


def _completeness(summary: dict[str, Any], ok: list[dict[str, Any]]) -> str:
    absolute = [v for r in ok for v in per_class_values(r.get("completeness_error"))]
    relative = [v for r in ok for v in per_class_values(r.get("relative_completeness_error"))]
    charts = [histogram(absolute, "Completeness error |Σ attributions − (F(x) − F(x′))|", "absolute error", log=True),
              histogram(relative, "Relative completeness error", "error / |F(x) − F(x′)|", log=True)]
    return ("<h2>Completeness</h2><p class=\"note\">How far the attributions' sum is from F(x) − F(x′): "
            "a check on the integral as a whole (not on each token).</p>"
            f'<div class="charts">{"".join(charts)}</div>'
            + _distribution_table([("absolute", summary.get("completeness_error")),
                                   ("relative", summary.get("relative_completeness_error"))]))


def _steps(summary: dict[str, Any]) -> str:
    steps = summary.get("steps_used")
    if not steps:
        return "<h2>Steps used</h2><p class=\"note\">no values</p>"
    counts = [(k, float(v)) for k, v in steps["counts"].items()]
    chart = bar_chart(counts, "Steps used per example", "path evaluations (n_steps)")
    converged = summary.get("converged")
    note = (f"<p>converged (n_steps auto): {converged['true']}, not converged: {converged['false']}</p>"
            if converged else "")
    return f"<h2>Steps used</h2><div class=\"charts\">{chart}</div>{note}" + _distribution_table([("steps", steps)])


def _faithfulness(summary: dict[str, Any], ok: list[dict[str, Any]]) -> str:
    values: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    for row in ok:
        for name, pairs in metric_values(row).items():
            values[name].extend(v for _, v in pairs)
    charts = [histogram(values[name], name, name + (" (higher: more faithful)" if name == "comprehensiveness" else
                                                    " (lower: more faithful)"))
              for name in METRIC_NAMES if values[name]]
    named = []
    for name, entry in summary["metrics"].items():
        named.append((name, entry))
        by_class = entry.get("by_class") or {}
        if len(by_class) > 1:
            named.extend((f"{name}: {cls}", d) for cls, d in by_class.items())
    return ("<h2>Faithfulness</h2><p class=\"note\">ERASER comprehensiveness and sufficiency (AOPC over removing / "
            "keeping the top 10 % … 100 % of tokens) and the log-odds change when the top 20 % are masked.</p>"
            f'<div class="charts">{"".join(charts)}</div>' + _distribution_table(named))


def _accuracy(acc: dict[str, Any]) -> str:
    rows = [[label, c["count"], c["correct"], c["accuracy"]] for label, c in acc["per_class"].items()]
    predicted = sorted({p for v in acc["confusion"].values() for p in v})
    confusion = [[gold, *[acc["confusion"][gold].get(p, 0) for p in predicted]] for gold in acc["confusion"]]
    return (f"<h2>Accuracy against the labels</h2><p><b>{acc['correct']} / {acc['labelled']}</b> = "
            f"{acc['accuracy']:.2%} of the labelled examples explained (failed examples are not counted).</p>"
            + _table(["label", "examples", "correct", "accuracy"], rows)
            + "<p>Confusion (rows: label, columns: predicted)</p>" + _table(["", *predicted], confusion))


def _top(top: dict[str, Any]) -> str:
    unit = top.get("unit", "tokens")
    parts = [f"<h2>{escape(unit.capitalize())} with the largest mean attribution, per class</h2>"
             f"<p class=\"note\">Mean attribution over each {escape(unit[:-1])}'s occurrences "
             f"(seen at least {top.get('min_count')} times); special tokens left out.</p><div class=\"charts\">"]
    for cls, entry in top.get("classes", {}).items():
        parts.append(hbar_chart([(e["unit"], e["mean"]) for e in entry["top"]], f"{cls}: largest"))
        parts.append(hbar_chart([(e["unit"], e["mean"]) for e in entry["bottom"]], f"{cls}: smallest"))
    if not top.get("classes"):
        parts.append('<p class="note">no values</p>')
    return "".join(parts) + "</div>"


def _slowest(slowest: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    rows = [[s["id"], s["request_seconds"], s.get("compute_seconds"), s["tokens"], s.get("steps_used"), s["text"]]
            for s in slowest]
    return "<h2>Slowest examples</h2>" + _table(
        ["id", "request s", "compute s", "tokens", "steps", "text"], rows)


def _failures(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    failed = [r for r in rows if is_error(r)][:50]
    table = _table(["id", "status", "code", "field", "description"],
                   [[r["id"], r["error"].get("status"), r["error"].get("code"), r["error"].get("field"),
                     r["error"].get("description")] for r in failed])
    counts = ", ".join(f"{k}: {v}" for k, v in summary["errors"].items())
    return f"<h2>Failed examples</h2><p>{escape(counts)}</p>{table}"
