"""The Scoring page: every inbox batch scored into the store, its counts, class mix, mean risks and drift.

Routes (added to the Models app's router, so behind the same `requires_authenticated()` and login redirect):

    /medpipe/scoring                                              the page
    /medpipe/scoring/<model>/<version>/<batch>/<file>             summary.json, errors.csv or predictions.csv

A batch whose drift index (PSI) of any feature is over its threshold carries a red DRIFT flag, and so does the
feature's cell, so a reviewer sees at a glance which batches to distrust. Every value from the store passes
through html.escape; files are served only from keys built by `scores.score_file_key` (each segment checked,
three file names allowed), with nosniff and a CSP that forbids running anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from medpipe_plugin.metric_views import fmt as _fmt
from medpipe_plugin.pages import page_html
from medpipe_plugin.scores import SCORE_FILES, BatchView, load_batches, score_file_key

if TYPE_CHECKING:
    from medpipe.store import Store

__all__ = ["add_scoring_routes", "render_scoring"]

_logger = logging.getLogger(__name__)

# As the Models app's file route: the browser may show these, never run them as a page.
_FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'"}
_STYLE = ".drift{background:#fbdcdc;color:#8a1c1c} td.over{background:#fde9e9;font-weight:600} " \
         ".unverified{background:#fff1c2;color:#6b4e00} tr.drifted td:first-child{border-left:4px solid #c62828}"


def _file_url(root: str, b: BatchView, name: str) -> str:
    return f"{root}/scoring/{quote(b.model_name)}/{quote(b.version)}/{quote(b.batch)}/{quote(name)}"


def _counts(b: BatchView) -> str:
    s = b.summary
    images = s.get("files")
    scored = (s.get("scored") or 0) + (s.get("kept") or 0) if "scored" in s else None
    return "".join(f'<td class="num">{_fmt(v)}</td>' for v in (images, scored, s.get("errors")))


def _mapping(values: Any) -> str:
    if not isinstance(values, dict) or not values:
        return '<span class="muted">—</span>'
    return "<br>".join(f"{escape(str(k))}: {_fmt(v)}" for k, v in values.items())


def _mean_risks(b: BatchView) -> str:
    """The batch's mean risk_<class> (prevalence-corrected), or mean prob_<class> for a model without risks."""
    means = b.summary.get("mean") if isinstance(b.summary.get("mean"), dict) else {}
    risks = {k: v for k, v in means.items() if str(k).startswith("risk_")}
    return _mapping(risks or means)


def _drift_cell(b: BatchView) -> str:
    drift = b.drift
    if not drift:
        return '<span class="muted">no drift record</span>'
    if not drift.get("available"):
        return f'<span class="muted">not checked: {escape(str(drift.get("reason", "no reason recorded")))}</span>'
    threshold = drift.get("threshold")
    psi = drift.get("psi") if isinstance(drift.get("psi"), dict) else {}
    rows = "".join(
        f'<tr><td>{escape(str(name))}</td><td class="num{" over" if _over(value, threshold) else ""}">'
        f'{_fmt(value)}</td></tr>' for name, value in psi.items())
    flag = ('<span class="badge drift">DRIFT: PSI over threshold</span>' if b.drifted
            else '<span class="badge pass">no drift</span>')
    return (f"{flag}<table><tr><th>feature</th><th>PSI (threshold {_fmt(threshold)})</th></tr>{rows}</table>"
            f'<span class="muted">n={_fmt(drift.get("n"))}</span>')


def _over(value: Any, threshold: Any) -> bool:
    return isinstance(value, (int, float)) and isinstance(threshold, (int, float)) and value > threshold


def _model_cell(root: str, b: BatchView) -> str:
    verified = b.summary.get("verified")
    note = ("" if verified is not False else
            f'<br><span class="badge unverified" title="{escape(str(b.summary.get("verification", "")))}">'
            "unverified model</span>")
    return (f'<a href="{root}/models/{quote(b.model_name)}/{quote(b.version)}">{escape(b.model_name)}<br>'
            f"{escape(b.version)}</a>{note}")


def _links(root: str, b: BatchView) -> str:
    if not b.servable:
        return '<span class="problem">names outside the page\'s alphabet: files not served</span>'
    return " · ".join(f'<a href="{_file_url(root, b, n)}">{n}</a>' for n in SCORE_FILES if n in b.files)


def _row(root: str, b: BatchView) -> str:
    problems = "".join(f'<div class="problem">{escape(p)}</div>' for p in b.problems)
    row_id = escape(f"{b.model_name}-{b.version}-{b.batch}")
    return (f'<tr id="{row_id}"{" class=drifted" if b.drifted else ""}><td>{escape(b.batch)}<br>'
            f'<span class="muted">{_fmt(b.scored_at)}</span>{problems}</td><td>{_model_cell(root, b)}</td>'
            f"{_counts(b)}<td>{_mapping(b.summary.get('predicted'))}</td><td>{_mean_risks(b)}</td>"
            f"<td>{_drift_cell(b)}</td><td>{_links(root, b)}</td></tr>")


def render_scoring(store_uri: str, batches: list[BatchView], problems: list[str], root: str) -> str:
    """The page: one row per scored batch, newest first."""
    drifted = sum(b.drifted for b in batches)
    rows = "".join(_row(root, b) for b in batches)
    table = ("<table><thead><tr><th>batch / scored at</th><th>model / version</th><th>images</th><th>scored</th>"
             "<th>errors</th><th>predicted classes</th><th>mean risks</th><th>drift</th><th>files</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>") if batches else "<p>No scored batches yet.</p>"
    listed = "".join(f'<li class="problem">{escape(p)}</li>' for p in problems)
    body = (f'<style>{_STYLE}</style><p><a href="{root}/models">← models</a></p><h1>Scoring</h1>'
            f'<p class="muted">Registry {escape(store_uri)} · {len(batches)} batch(es)'
            + (f' · <span class="badge drift">{drifted} drifted</span>' if drifted else "")
            + f"</p>{table}" + (f"<h2>Problems</h2><ul>{listed}</ul>" if listed else ""))
    return page_html("medpipe scoring", body)


def add_scoring_routes(router: APIRouter, store: Callable[[], Store]) -> None:
    """Add the page and its file route to `router` (the app's authenticated router)."""

    def _read(action: Callable[[Store], Any], what: str) -> Any:
        from medpipe.store import ObjectNotFoundError, StoreError

        try:
            return action(store())
        except ObjectNotFoundError:
            raise HTTPException(404, f"{what} does not exist in the registry") from None
        except StoreError as exc:
            _logger.warning("cannot read %s: %s", what, exc)
            raise HTTPException(502, f"cannot read {what} from the model registry: {exc}") from None

    def scoring_page(request: Request) -> HTMLResponse:
        batches, problems = _read(load_batches, "scores/")
        root = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(render_scoring(store().uri(), batches, problems, root))

    def scoring_file(model_name: str, version: str, batch: str, name: str) -> Response:
        try:
            key = score_file_key(model_name, version, batch, name)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        data = _read(lambda s: s.get_bytes(key), key)
        headers = dict(_FILE_HEADERS)
        if name.endswith(".csv"):  # a table to open elsewhere, named after its batch
            headers["Content-Disposition"] = f'attachment; filename="{batch}-{name}"'
        return Response(data, media_type=SCORE_FILES[name], headers=headers)

    router.add_api_route("/scoring", scoring_page, methods=["GET"], response_class=HTMLResponse)
    router.add_api_route("/scoring/{model_name}/{version}/{batch}/{name}", scoring_file, methods=["GET"])
