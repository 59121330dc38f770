"""Server-rendered SVG charts: no JavaScript and nothing fetched from a CDN, so pages work offline and print."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from html import escape

from django.utils.safestring import SafeString, mark_safe

PALETTE = ["#4f46e5", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#8b5cf6", "#14b8a6", "#f97316"]


def bar_chart(
    items: Sequence[tuple[str, Decimal]],
    fmt: Callable[[Decimal], str],
    *,
    height: int = 180,
    label_every: int = 1,
    title: str = "",
) -> SafeString:
    """Vertical bars (e.g. spend by day). Each bar has a <title> tooltip with its exact value."""
    if not items:
        return mark_safe('<p class="empty">No usage in this period yet.</p>')
    width, pad_left, pad_bottom = 1000, 8, 22
    top = max((v for _, v in items), default=Decimal(0)) or Decimal(1)
    bar_w = (width - pad_left) / len(items)
    parts = [
        f'<svg class="chart bar-chart" viewBox="0 0 {width} {height + pad_bottom}" role="img" '
        f'aria-label="{escape(title)}">'
    ]
    for i, (label, value) in enumerate(items):
        h = float(value / top) * height
        x = pad_left + i * bar_w
        parts.append(
            f'<rect class="bar" x="{x + 2:.1f}" y="{height - h:.1f}" width="{max(bar_w - 4, 1):.1f}" height="{h:.1f}" '
            f'fill="{PALETTE[0]}" data-value="{value}"><title>{escape(label)}: {escape(fmt(value))}</title></rect>'
        )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height + 15}" text-anchor="middle" class="axis">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every dynamic value above is escaped


def _short(label: str, limit: int = 28) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def share_chart(
    items: Sequence[tuple[str, Decimal]], fmt: Callable[[Decimal], str], *, title: str = ""
) -> SafeString:
    """Horizontal bars with labels and values (spend by meter, model or agent), largest first."""
    items = sorted((i for i in items if i[1] > 0), key=lambda i: i[1], reverse=True)[:10]
    if not items:
        return mark_safe('<p class="empty">No usage in this period yet.</p>')
    total = sum((v for _, v in items), Decimal(0)) or Decimal(1)
    row_h, width = 28, 600
    parts = [
        f'<svg class="chart share-chart" viewBox="0 0 {width} {row_h * len(items)}" role="img" aria-label="{escape(title)}">'
    ]
    top = items[0][1]
    for i, (label, value) in enumerate(items):
        w = float(value / top) * 230
        y = i * row_h
        share = value / total * 100
        parts.append(
            f'<text x="0" y="{y + 18}" class="label"><title>{escape(label)}</title>{escape(_short(label))}</text>'
            f'<rect class="bar" x="200" y="{y + 6}" width="{max(w, 1):.1f}" height="16" rx="3" '
            f'fill="{PALETTE[i % len(PALETTE)]}" data-value="{value}"><title>{escape(label)}: {escape(fmt(value))}</title></rect>'
            f'<text x="{205 + w:.1f}" y="{y + 18}" class="value">{escape(fmt(value))} · {share:.0f}%</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every dynamic value above is escaped
