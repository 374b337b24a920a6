"""A tiny server-side SVG bar chart (no JavaScript): one series as plain bars, several stacked, with a legend.

The SVG scales to its container (``viewBox``, width 100%), carries a ``<title>`` for screen readers and one per
bar (hover text), and escapes every label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0891b2", "#db2777", "#65a30d")


@dataclass(frozen=True, slots=True)
class Series:
    """One named row of values, one per category."""

    name: str
    values: tuple[int, ...]


def axis_scale(top: float, ticks: int = 4) -> tuple[float, float]:
    """The value axis for data up to ``top``: ``(axis_max, step)`` with a step of 1, 2 or 5 × 10ⁿ and about
    ``ticks`` steps (at least one step of 1 for nothing)."""
    if top <= 0:
        return 1.0, 1.0
    raw = top / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(float(m * magnitude) for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if top >= 1 and step < 1:
        step = 1.0
    return step * math.ceil(top / step - 1e-9), step


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def bar_chart(
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    value_label: Callable[[float], str] = lambda v: f"{v:,.0f}",
    width: int = 600,
    height: int = 280,
    label_every: int = 1,
) -> Markup:
    """An SVG bar chart of ``series`` over ``categories`` (stacked when there are several series)."""
    if any(len(s.values) != len(categories) for s in series):
        raise ValueError("every series has one value per category")
    left, right, top = 64, 12, 12
    legend_height = 26 if len(series) > 1 else 0
    bottom = 30 + legend_height
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(max(s.values[i], 0) for s in series) for i in range(len(categories))]
    axis_max, step = axis_scale(max(totals, default=0))
    parts: list[str] = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in range(round(axis_max / step) + 1):
        value = step * tick
        y = top + plot_h - plot_h * value / axis_max
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{_fmt(y)}" y2="{_fmt(y)}" class="grid" '
            'stroke="#d1d5db" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{_fmt(y + 4)}" text-anchor="end" font-size="13" fill="#4b5563">'
            f"{escape(value_label(value))}</text>"
        )
    slot = plot_w / max(len(categories), 1)
    bar_w = max(slot * 0.7, 1.0)
    for index, category in enumerate(categories):
        x = left + slot * index + (slot - bar_w) / 2
        base = float(top + plot_h)
        for number, row in enumerate(series):
            value = max(row.values[index], 0)
            if value == 0:
                continue
            h = plot_h * value / axis_max
            base -= h
            colour = PALETTE[number % len(PALETTE)]
            tip = f"{category}: {value_label(value)}"
            if len(series) > 1:
                tip = f"{row.name} · {tip}"
            parts.append(
                f'<rect x="{_fmt(x)}" y="{_fmt(base)}" width="{_fmt(bar_w)}" height="{_fmt(h)}" fill="{colour}">'
                f"<title>{escape(tip)}</title></rect>"
            )
        if index % max(label_every, 1) == 0:
            parts.append(
                f'<text x="{_fmt(x + bar_w / 2)}" y="{top + plot_h + 18}" text-anchor="middle" font-size="13" '
                f'fill="#374151">{escape(category)}</text>'
            )
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#6b7280"/>')
    if len(series) > 1:
        x = float(left)
        y = height - 8
        for number, row in enumerate(series):
            colour = PALETTE[number % len(PALETTE)]
            parts.append(f'<rect x="{_fmt(x)}" y="{y - 10}" width="12" height="12" fill="{colour}"/>')
            parts.append(f'<text x="{_fmt(x + 16)}" y="{y}" font-size="13" fill="#111827">{escape(row.name)}</text>')
            x += 30 + 8 * len(row.name)
    parts.append("</svg>")
    return Markup("".join(parts))
