"""Small inline SVG charts for report.html: histograms and bar charts.

Written by hand so the report is one file that opens anywhere, offline,
with no script and nothing fetched. Every piece of text is escaped: labels
come from the data set (a review may well contain ``<script>``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH = 560
HEIGHT = 220
MARGIN = (34, 14, 40, 50)  # top, right, bottom, left
BAR = "#4a78b5"
NEGATIVE = "#c0504d"
AXIS = "#444"


def fmt(value: float) -> str:
    """A number short enough for an axis label."""
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.3g}"


def _frame(title: str, body: list[str], width: int = WIDTH, height: int = HEIGHT) -> str:
    return (f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{escape(title)}">'
            f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" class="title">{escape(title)}</text>'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, anchor: str = "middle", cls: str = "tick") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="{cls}">{escape(text)}</text>'


def histogram(values: Sequence[float], title: str, x_label: str, *, log: bool = False, bins: int = 20) -> str:
    """Counts of ``values`` in equal bins (of log10 values when ``log``; zeros then counted apart)."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    zeros = 0
    if log:
        zeros = sum(1 for v in numbers if v <= 0)
        numbers = [math.log10(v) for v in numbers if v > 0]
    if not numbers:
        note = f"{zeros} values of 0" if zeros else "no values"
        return _frame(title, [_text(WIDTH / 2, HEIGHT / 2, note)])
    low, high = min(numbers), max(numbers)
    if high == low:
        low, high = low - 0.5, high + 0.5
    counts = [0] * bins
    for v in numbers:
        counts[min(int((v - low) / (high - low) * bins), bins - 1)] += 1
    top, right, bottom, left = MARGIN
    plot_w, plot_h = WIDTH - left - right, HEIGHT - top - bottom
    peak = max(counts)
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="{AXIS}"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="{AXIS}"/>']
    step = plot_w / bins
    for i, count in enumerate(counts):
        if count:
            h = plot_h * count / peak
            lo, hi = low + (high - low) * i / bins, low + (high - low) * (i + 1) / bins
            where = f"{fmt(10 ** lo)}–{fmt(10 ** hi)}" if log else f"{fmt(lo)}–{fmt(hi)}"
            body.append(f'<rect x="{left + i * step + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(step - 2, 1):.1f}" '
                        f'height="{h:.1f}" fill="{BAR}"><title>{escape(where)}: {count}</title></rect>')
    for i in range(5):
        value = low + (high - low) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        body.append(_text(left + plot_w * i / 4, top + plot_h + 14, fmt(10 ** value) if log else fmt(value), anchor))
    body.append(_text(left - 6, top + 4, str(peak), "end"))
    body.append(_text(left - 6, top + plot_h, "0", "end"))
    label = x_label + (" (log scale)" if log else "") + (f"; {zeros} zeros not shown" if zeros else "")
    body.append(_text(left + plot_w / 2, HEIGHT - 6, label, cls="label"))
    return _frame(title, body)


def bar_chart(items: Sequence[tuple[str, float]], title: str, x_label: str) -> str:
    """Vertical bars, one per (category, value), in the order given."""
    if not items:
        return _frame(title, [_text(WIDTH / 2, HEIGHT / 2, "no values")])
    top, right, bottom, left = MARGIN
    plot_w, plot_h = WIDTH - left - right, HEIGHT - top - bottom
    peak = max(v for _, v in items) or 1
    step = min(plot_w / len(items), 60.0)  # a few categories get bars, not walls
    offset = left + (plot_w - step * len(items)) / 2
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="{AXIS}"/>']
    every = max(1, math.ceil(len(items) / 12))
    for i, (name, value) in enumerate(items):
        h = plot_h * value / peak
        x = offset + i * step
        body.append(f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}" '
                    f'fill="{BAR}"><title>{escape(name)}: {fmt(value)}</title></rect>')
        if i % every == 0:
            body.append(_text(x + step / 2, top + plot_h + 14, name))
    body.append(_text(left - 6, top + 4, fmt(peak), "end"))
    body.append(_text(left + plot_w / 2, HEIGHT - 6, x_label, cls="label"))
    return _frame(title, body)


def hbar_chart(items: Sequence[tuple[str, float]], title: str) -> str:
    """Horizontal bars around a zero line, one row per (label, value): top tokens."""
    row_h, label_w, pad = 18, 150, 10
    height = 30 + row_h * max(len(items), 1) + 10
    width = WIDTH
    if not items:
        return _frame(title, [_text(width / 2, 45, "no values")], width, height)
    extent = max(abs(v) for _, v in items) or 1.0
    has_negative = any(v < 0 for _, v in items)
    plot_w = width - label_w - 2 * pad - 60
    zero = label_w + pad + (plot_w / 2 if has_negative else 0)
    scale = (plot_w / 2 if has_negative else plot_w) / extent
    body = [f'<line x1="{zero:.1f}" y1="26" x2="{zero:.1f}" y2="{height - 8}" stroke="{AXIS}"/>']
    for i, (name, value) in enumerate(items):
        y = 30 + i * row_h
        w = abs(value) * scale
        x = zero if value >= 0 else zero - w
        color = BAR if value >= 0 else NEGATIVE
        short = name if len(name) <= 22 else name[:21] + "…"
        body.append(_text(label_w, y + 12, short, "end", "tick"))
        body.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{max(w, 0.5):.1f}" height="{row_h - 4}" fill="{color}">'
                    f'<title>{escape(name)}: {fmt(value)}</title></rect>')
        body.append(_text((x + w + 4) if value >= 0 else (x - 4), y + 12, fmt(value), "start" if value >= 0 else "end"))
    return _frame(title, body, width, height)
