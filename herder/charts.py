"""Charts drawn on the server as inline SVG: no script, no CDN, nothing for
the admin's pages to load. Two shapes: stacked bars and lines, over a shared
list of x labels. Every value is escaped; sizes are in SVG user units."""

from __future__ import annotations

import math

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 200, 48, 22, 8
# Distinguishable, and readable on the admin's light and dark themes.
COLOURS = ["#417690", "#e07b39", "#5aa469", "#c94c4c", "#8e6fbf", "#b8a038", "#3fa7b5", "#888888"]


def _frame(title: str, top: float, unit: str, labels: list[str], body: list[str], keys: list[str]) -> SafeString:
    plot_w = WIDTH - LEFT - 8
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT + 20 * ((len(keys) + 3) // 4)}" '
        f'width="100%" xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        value = top * i / 4
        y = TOP + (HEIGHT - TOP - BOTTOM) * (1 - i / 4)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#8884" />'
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" fill="currentColor">'
            f"{escape(_short(value))}{escape(unit)}</text>"
        )
    step = max(1, len(labels) // 6)
    for i in range(0, len(labels), step):
        x = LEFT + plot_w * (i + 0.5) / max(1, len(labels))
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle" fill="currentColor">{escape(labels[i])}</text>'
        )
    parts.extend(body)
    for i, key in enumerate(keys):
        x, y = LEFT + (i % 4) * 170, HEIGHT + 14 + 20 * (i // 4)
        parts.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{COLOURS[i % len(COLOURS)]}" />'
            f'<text class="legend" x="{x + 14}" y="{y}" fill="currentColor">{escape(key)}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _nice(top: float) -> float:
    """The axis' top: four steps of 1, 2, 2.5 or 5 times a power of ten."""
    step = top / 4
    magnitude = 10 ** math.floor(math.log10(step)) if step > 0 else 1
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= step:
            return 4 * factor * magnitude
    return top


def _short(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value == int(value) or value >= 10 else f"{value:.2f}".rstrip("0").rstrip(".")


def bars(title: str, labels: list[str], series: dict[str, list[float]], *, unit: str = "") -> SafeString:
    """Stacked bars: one bar per label, one coloured part per series key."""
    keys = sorted(series)
    totals = [sum(series[k][i] for k in keys) for i in range(len(labels))]
    top = _nice(max(totals, default=0) or 1)
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - TOP - BOTTOM
    width = plot_w / max(1, len(labels))
    body = []
    for i, label in enumerate(labels):
        base = 0.0
        for k, key in enumerate(keys):
            value = series[key][i]
            if not value:
                continue
            h = plot_h * value / top
            y = TOP + plot_h - plot_h * base / top - h
            body.append(
                f'<rect class="bar" x="{LEFT + i * width + 1:.1f}" y="{y:.1f}" '
                f'width="{max(1.0, width - 2):.1f}" height="{h:.1f}" fill="{COLOURS[k % len(COLOURS)]}">'
                f"<title>{escape(label)} {escape(key)}: {escape(_short(value))}{escape(unit)}</title></rect>"
            )
            base += value
    return _frame(title, top, unit, labels, body, keys)


def lines(title: str, labels: list[str], series: dict[str, list[float | None]], *, unit: str = "") -> SafeString:
    """One line per series key; None leaves a gap (no data for that label)."""
    keys = sorted(series)
    top = _nice(max((v for k in keys for v in series[k] if v is not None), default=0) or 1)
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - TOP - BOTTOM
    body = []
    for k, key in enumerate(keys):
        colour = COLOURS[k % len(COLOURS)]
        points = []
        for i, value in enumerate(series[key]):
            if value is None:
                continue
            x = LEFT + plot_w * (i + 0.5) / max(1, len(labels))
            y = TOP + plot_h * (1 - value / top)
            points.append(f"{x:.1f},{y:.1f}")
            body.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(labels[i])} {escape(key)}: {escape(_short(value))}{escape(unit)}"
                f"</title></circle>"
            )
        if len(points) > 1:
            body.insert(0, f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(points)}" />')
    return _frame(title, top, unit, labels, body, keys)


def empty(title: str) -> SafeString:
    return format_html('<p class="chart-empty">{}: nothing recorded yet.</p>', title)
