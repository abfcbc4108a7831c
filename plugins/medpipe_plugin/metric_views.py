"""HTML pieces of a version's metrics.json beyond the headline table: intervals, calibration, pairwise AUC and
operating points (what the model card, medpipe/evaluate/card.py, writes from the same data), shared by the version
and compare pages.

No import of pages.py (which imports this), so the plugin's modules form no cycle.
"""

from __future__ import annotations

from html import escape
from typing import Any

from medpipe.contracts import HEADLINE_METRICS

__all__ = ["fmt", "interval_text", "version_details"]


def fmt(value: Any) -> str:
    """A metric as the pages show it: 3 decimals, "—" for undefined (null in metrics.json)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(str(value))


def interval_text(interval: Any) -> str:
    """"[lo–hi]" of a 95 % interval, "" when there is none (no bootstrap, or too few resamples kept every class)."""
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in interval)):
        return ""
    return f"[{interval[0]:.3f}–{interval[1]:.3f}]"


def _intervals(m: dict[str, Any]) -> str:
    ci = m.get("confidence_intervals") or {}
    rows = "".join(f"<tr><th>{escape(k)}</th><td class=num>{fmt(m.get(k))}</td><td class=num>"
                   f"{interval_text(ci.get(k)) or '—'}</td></tr>" for k in HEADLINE_METRICS)
    how = (f"{fmt(ci.get('level'))} intervals, {escape(str(ci.get('method', 'bootstrap')))}"
           + (f" over {fmt(ci.get('groups'))} patients" if ci.get("groups") is not None else "")) if ci else \
        "no intervals in metrics.json (evaluate.bootstrap_resamples was 0, or an older medpipe)"
    return (f'<table><tr><th>metric</th><th>value</th><th>95 % interval</th></tr>{rows}</table>'
            f'<p class="muted">{how}</p>')


def _calibration(m: dict[str, Any]) -> str:
    cal = m.get("calibration")
    if not isinstance(cal, dict):
        return ""
    per_class = cal.get("per_class") or {}
    rows = "".join(f"<tr><th>{escape(str(c))}</th><td class=num>{fmt((v or {}).get('mean_probability'))}</td>"
                   f"<td class=num>{fmt((v or {}).get('prevalence'))}</td></tr>" for c, v in per_class.items())
    return (f"<h3>Calibration</h3><p>Brier score {fmt(cal.get('brier'))} (predicting the prevalence: "
            f"{fmt(cal.get('brier_prevalence'))}; lower is better), expected calibration error {fmt(cal.get('ece'))}"
            f" ({fmt(cal.get('ece_bins'))} bins).</p>"
            + (f"<table><tr><th>class</th><th>mean predicted probability</th><th>prevalence</th></tr>{rows}</table>"
               if rows else ""))


def _pairwise(m: dict[str, Any]) -> str:
    pairs = m.get("pairwise_auc")
    if not isinstance(pairs, dict) or not pairs:
        return ""
    rows = "".join(f"<tr><th>{escape(str(k).replace('_vs_', ' vs '))}</th><td class=num>{fmt(v)}</td></tr>"
                   for k, v in pairs.items())
    return ("<h3>Pairwise ROC AUC</h3><p class=muted>One class against one other, on their images only; a pair near "
            f"0.5 is told apart at chance.</p><table>{rows}</table>")


# Per-class operating points as medpipe.evaluate.metrics writes them into per_class (the card's table too).
_OPERATING_POINTS = (("roc_auc", "ROC AUC"), ("average_precision", "AP"),
                     ("sensitivity_at_90_specificity", "sensitivity at 90 % specificity"),
                     ("sensitivity_at_95_specificity", "sensitivity at 95 % specificity"))


def _operating_points(m: dict[str, Any]) -> str:
    per_class = m.get("per_class")
    if not isinstance(per_class, dict) or not per_class:
        return ""
    header = "".join(f"<th>{label}</th>" for _, label in _OPERATING_POINTS)
    rows = "".join(f"<tr><th>{escape(str(c))}</th>" + "".join(f"<td class=num>{fmt((v or {}).get(k))}</td>"
                                                             for k, _ in _OPERATING_POINTS) + "</tr>"
                   for c, v in per_class.items())
    return ("<h3>Operating points</h3><p class=muted>One class against the rest: the sensitivity the model reaches "
            f"at a fixed specificity (a screening threshold).</p><table><tr><th>class</th>{header}</tr>{rows}</table>")


def version_details(split: str, m: dict[str, Any]) -> str:
    """Intervals, calibration, pairwise AUC and operating points of one split of metrics.json ("" for none)."""
    if not m:
        return ""
    return (f"<h3>{escape(split)}: intervals</h3>{_intervals(m)}{_calibration(m)}{_pairwise(m)}"
            f"{_operating_points(m)}")
