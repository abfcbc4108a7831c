"""The trend of the primary metric over runs, as an inline SVG string: no JavaScript, no plotting library in the
API server. Drawn from the run records (medpipe.run_record): per run, the challenger's value with its 95 %
interval (green when the gate passed, red when it rejected) and the champion's value as the gate re-scored it on
the same split (a grey line): the gap between them is what the gate judged.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medpipe.contracts import RunRecord

__all__ = ["trend_svg"]

_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 640, 220, 48, 12, 16, 30


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def trend_svg(records: list[RunRecord]) -> str:
    """The chart for the runs that share the newest run's primary metric and split (another metric is another
    scale); oldest left. A short note instead when fewer than one such run has a value."""
    if not records:
        return ""
    metric, split = records[0].primary_metric, records[0].split
    runs = [r for r in reversed(records) if (r.primary_metric, r.split) == (metric, split)]
    points = []
    for r in runs:
        value, interval = r.primary()
        bounds = [_number(b) for b in interval] if isinstance(interval, list) and len(interval) == 2 else [None, None]
        points.append((r, _number(value), bounds, _number(r.gate.get("champion_metric"))))
    values = [v for _, v, b, c in points for v in (v, *b, c) if v is not None]
    if not values:
        return f'<p class="muted">No {escape(str(metric))} values recorded yet for a trend.</p>'
    low, high = min(values), max(values)
    pad = max((high - low) * 0.1, 0.02)
    low, high = max(0.0, low - pad), min(1.0, high + pad) if high <= 1 else high + pad
    step = (_W - _LEFT - _RIGHT) / max(len(points), 1)

    def x(i: int) -> float:
        return _LEFT + step * (i + 0.5)

    def y(v: float) -> float:
        return _TOP + (high - v) / (high - low or 1) * (_H - _TOP - _BOTTOM)

    parts = [f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_H - _BOTTOM}" stroke="#8895a7"/>']
    for tick in (low, (low + high) / 2, high):
        parts.append(f'<text x="{_LEFT - 4}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="10">{tick:.2f}</text>')
    champion = [(x(i), y(c)) for i, (_, _, _, c) in enumerate(points) if c is not None]
    if len(champion) > 1:
        parts.append('<polyline fill="none" stroke="#8895a7" stroke-width="2" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in champion) + '"/>')
    parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="#8895a7"><title>champion</title></circle>'
              for a, b in champion]
    for i, (r, value, (lo, hi), _) in enumerate(points):
        if lo is not None and hi is not None:
            parts.append(f'<line x1="{x(i):.1f}" y1="{y(lo):.1f}" x2="{x(i):.1f}" y2="{y(hi):.1f}" stroke="#5f6b7a"/>')
        if value is not None:
            color = "#1f8a3b" if r.status == "passed" else "#c0392b"
            label = f"{r.run_id}: {r.gate.get('challenger')} {value:.3f} ({r.status})"
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(value):.1f}" r="5" fill="{color}">'
                         f"<title>{escape(label)}</title></circle>")
        parts.append(f'<text x="{x(i):.1f}" y="{_H - 12}" text-anchor="middle" font-size="9">'
                     f"{escape((r.started_at or r.run_id)[:10])}</text>")
    title = f"{metric} on {split}: challengers (green passed, red rejected, with 95 % interval) and champion (grey)"
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
            f'role="img" aria-label="{escape(title)}">{"".join(parts)}</svg>'
            f'<figcaption class="muted">{escape(title)}</figcaption></figure>')
