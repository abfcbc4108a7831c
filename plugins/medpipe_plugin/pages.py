"""Server-rendered HTML of the Models page: every value from the store passes through html.escape."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

from medpipe.contracts import HEADLINE_METRICS
from medpipe_plugin.catalog import Catalog, VersionView
from medpipe_plugin.metric_views import fmt as _fmt, version_details

__all__ = ["page_html", "promotion_note", "render_catalog", "render_card", "render_version"]

_PLOT_KINDS = ("confusion", "roc")  # shown on the overview; the version page shows every plot

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2rem;color:#1d2733}
h1{font-size:1.4rem;margin:0 0 .3rem} h2{font-size:1.15rem;margin:1.4rem 0 .4rem} .muted{color:#5f6b7a}
table{border-collapse:collapse;margin:.4rem 0 1rem} th,td{border:1px solid #d5dbe3;padding:.3rem .55rem;
text-align:left;vertical-align:top;font-size:.9rem} th{background:#f1f4f8} td.num{text-align:right;
font-variant-numeric:tabular-nums} .badge{display:inline-block;padding:.05rem .45rem;border-radius:.6rem;
font-size:.8rem;font-weight:600} .champion{background:#ffe8a3;color:#6b4e00} .pass{background:#d9f2df;
color:#145c2a} .fail{background:#fbdcdc;color:#8a1c1c} .problem{color:#8a1c1c} img.plot{width:150px;
border:1px solid #d5dbe3;margin:.2rem} td.plots a{display:block} ul{margin:.2rem 0;padding-left:1.2rem}
"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def page_html(title: str, body: str) -> str:
    """A page in the Models page's style (the Scoring page uses it too)."""
    return _page(title, body)


def promotion_note(champion: dict[str, Any] | None) -> str:
    """What champion.json says about how the champion got there, when it never passed a gate (manual promotion,
    medpipe.registry.promotion); "" for a champion promoted by its gate or recorded before promotions were."""
    if not champion or champion.get("promotion") != "manual":
        return ""
    return (f' <span class="badge fail" title="{escape(str(champion.get("promotion_reason", "")))}">champion by '
            "manual promotion, no passed gate</span>")


def _interval(split_metrics: dict[str, Any], key: str) -> str:
    """The 95 % patient-bootstrap interval under a figure, where metrics.json has one (medpipe >= evaluate CI)."""
    bounds = ((split_metrics.get("confidence_intervals") or {}).get(key) or [])
    if len(bounds) != 2 or not all(isinstance(b, (int, float)) for b in bounds):
        return ""
    return f'<br><span class="muted" title="95 % interval, bootstrap over patients">{bounds[0]:.2f}–{bounds[1]:.2f}</span>'


def _file_url(root: str, v: VersionView, name: str) -> str:
    return f"{root}/models/{quote(v.model_name)}/{quote(v.version)}/files/{quote(name)}"


def _version_url(root: str, v: VersionView) -> str:
    return f"{root}/models/{quote(v.model_name)}/{quote(v.version)}"


def _gate_cell(v: VersionView) -> str:
    if v.gate is None:
        return '<span class="muted">no gate record</span>'
    badge = '<span class="badge pass">passed</span>' if v.gate.passed else '<span class="badge fail">failed</span>'
    items = "".join(f"<li>{escape(str(r))}</li>" for r in v.gate.reasons)
    return badge + (f"<ul>{items}</ul>" if items else "")


def _card_url(root: str, v: VersionView) -> str:
    return f"{_version_url(root, v)}/card"


def _compare_link(root: str, v: VersionView, champion: VersionView | None) -> list[str]:
    """The compare page (compare_view.py) of the champion (a) and `v` (b); the segments are URL-quoted, so the '&'
    needs no HTML escaping (and a link checker reads the URL as the browser does)."""
    if champion is None or champion is v:
        return []
    return [f'<a href="{root}/compare?a={quote(champion.model_name)}/{quote(champion.version)}&b='
            f'{quote(v.model_name)}/{quote(v.version)}">compare with champion</a>']


def _links(root: str, v: VersionView, champion: VersionView | None = None) -> str:
    links = [f'<a href="{_card_url(root, v)}">model card</a>'] if "model_card.md" in v.files else []
    links += _compare_link(root, v, champion)
    names = [("model.onnx", "ONNX"), ("model_card.md", "card (Markdown)"), ("metrics.json", "metrics.json"),
             ("parity.json", "parity.json")]
    links += [f'<a href="{_file_url(root, v, n)}">{label}</a>' for n, label in names if n in v.files]
    return " · ".join(links)


def render_card(v: VersionView, markdown: str, root: str) -> str:
    """The model card as HTML: Markdown rendered by markdown-it-py with raw HTML off (a card is data, never
    markup: a `<script>` in it is shown as text), tables on, and its relative image paths (`plots/x.png`)
    resolved against the version's files through the page's <base>."""
    from markdown_it import MarkdownIt  # markdown-it-py: only this page needs it

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    base = f'{_file_url(root, v, "")}'
    title = f"model card — {v.model_name} {v.version}"
    back = f'<p><a href="{_version_url(root, v)}">← {escape(v.model_name)} {escape(v.version)}</a></p>'
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f'<base href="{escape(base)}"><style>{_STYLE} .card img{{max-width:100%;height:auto}}</style></head>'
            f'<body>{back}<div class="card">{body}</div></body></html>')


def _plots(root: str, v: VersionView, kinds: tuple[str, ...] | None) -> str:
    chosen = [p for p in v.plots if kinds is None or any(p.endswith(f"_{k}.png") for k in kinds)]
    if kinds is not None:  # the overview shows the selection split's plots only
        chosen = [p for p in chosen if p.startswith("plots/val_")] or chosen[:2]
    return "".join(f'<a href="{_file_url(root, v, p)}"><img class="plot" alt="{escape(p)}" '
                   f'src="{_file_url(root, v, p)}"></a>' for p in chosen)


def _version_row(root: str, v: VersionView, split: str, champion_view: VersionView | None = None,
                 champion_note: str = "") -> str:
    m = v.split_metrics(split)
    recall_cancer = ((m.get("per_class") or {}).get("cancer") or {}).get("recall")
    champion = ' <span class="badge champion">champion</span>' + champion_note if v.is_champion else ""
    problems = "".join(f'<div class="problem">{escape(p)}</div>' for p in v.problems)
    cells = "".join(f'<td class="num">{_fmt(m.get(k))}{_interval(m, k)}</td>' for k in HEADLINE_METRICS)
    return (f'<tr id="{escape(v.model_name)}-{escape(v.version)}"><td><a href="{_version_url(root, v)}">'
            f"{escape(v.model_name)}<br>{escape(v.version)}</a>{champion}{problems}</td>"
            f"<td>{_fmt(v.published_at)}</td>{cells}<td class=num>{_fmt(recall_cancer)}</td>"
            f"<td>{_gate_cell(v)}</td><td>{_links(root, v, champion_view)}</td><td class=plots>{_plots(root, v, _PLOT_KINDS)}</td></tr>")


def _champion_summary(catalog: Catalog, root: str) -> str:
    champ = catalog.champion
    if champ is None:
        return "<p>No champion yet: no version has passed the gate.</p>"
    view = catalog.find(str(champ.get("model_name")), str(champ.get("version")))
    name = f"{escape(str(champ.get('model_name')))} {escape(str(champ.get('version')))}"
    link = f'<a href="{_version_url(root, view)}">{name}</a>' if view else name
    return (f'<p>Champion: <strong>{link}</strong> <span class="badge champion">champion</span> '
            f'{promotion_note(champ)}<span class="muted"> published {_fmt(champ.get("published_at"))}, sha256 '
            f'{escape(str(champ.get("sha256", ""))[:12])}…</span></p>')


def render_catalog(catalog: Catalog, root: str, split: str = "val") -> str:
    """The overview: champion, then every version with metrics, gate result, links and plots."""
    header = "".join(f"<th>{escape(k)} ({escape(split)})</th>" for k in HEADLINE_METRICS)
    champion = next((v for v in catalog.versions if v.is_champion), None)
    rows = "".join(_version_row(root, v, split, champion, promotion_note(catalog.champion)) for v in catalog.versions)
    problems = "".join(f'<li class="problem">{escape(p)}</li>' for p in catalog.problems)
    table = (f"<table><thead><tr><th>model / version</th><th>published</th>{header}<th>recall cancer ({escape(split)})</th>"
             f"<th>gate</th><th>files</th><th>plots ({escape(split)})</th></tr></thead><tbody>{rows}</tbody>"
             "</table>") if catalog.versions else "<p>No published versions.</p>"
    body = (f'<p><a href="{root}/runs">Runs</a> (every retraining run, its verdict and the trend) · '
            f'<a href="{root}/scoring">Scoring</a> (inbox batches, drift)</p>'
            f"<h1>Models</h1><p class=muted>Registry {escape(catalog.store_uri)} · "
            f"{len(catalog.versions)} version(s)</p>{_champion_summary(catalog, root)}{table}"
            + (f"<h2>Problems</h2><ul>{problems}</ul>" if problems else ""))
    return _page("medpipe models", body)


def _metrics_table(v: VersionView, split: str) -> str:
    m = v.split_metrics(split)
    baseline = m.get("baseline") or {}
    rows = "".join(f'<tr><th>{escape(k)}</th><td class="num">{_fmt(m.get(k))}</td>'
                   f'<td class="num">{_fmt(baseline.get(k))}</td></tr>' for k in HEADLINE_METRICS)
    per_class = m.get("per_class") or {}
    keys = ("precision", "recall", "f1", "roc_auc", "average_precision", "support")
    class_rows = "".join(
        f"<tr><th>{escape(str(c))}</th>" + "".join(f'<td class="num">{_fmt((vals or {}).get(k))}</td>' for k in keys)
        + "</tr>" for c, vals in per_class.items())
    return (f"<h2>{escape(split)} (n={_fmt(m.get('n'))})</h2><table><tr><th>metric</th><th>model</th>"
            f"<th>majority baseline</th></tr>{rows}</table><table><tr><th>class</th>"
            + "".join(f"<th>{k}</th>" for k in keys) + f"</tr>{class_rows}</table>")


def render_version(catalog: Catalog, v: VersionView, root: str) -> str:
    """One version: every split's metrics beside the baseline, the gate decision, all plots and files."""
    champion = (' <span class="badge champion">champion</span>' + promotion_note(catalog.champion)
                if v.is_champion else "")
    problems = "".join(f'<li class="problem">{escape(p)}</li>' for p in v.problems)
    files = "".join(f'<li><a href="{_file_url(root, v, f)}">{escape(f)}</a></li>' for f in v.files
                    if not f.startswith("plots/"))
    body = (f'<p><a href="{root}/models">← all models</a></p><h1>{escape(v.model_name)} {escape(v.version)}'
            f'{champion}</h1><p class="muted">published {_fmt(v.published_at)}</p>'
            + (f"<ul>{problems}</ul>" if problems else "")
            + f"<h2>Gate</h2>{_gate_cell(v)}"
            + "".join(_metrics_table(v, s) + version_details(s, v.split_metrics(s)) for s in v.splits)
            + f"<h2>Plots</h2>{_plots(root, v, None) or '<p>none</p>'}<h2>Files</h2><ul>{files}</ul>")
    return _page(f"medpipe {v.model_name} {v.version}", body)
