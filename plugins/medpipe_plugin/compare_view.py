"""The compare page, /medpipe/compare?a=<model>/<version>&b=<model>/<version>: two published versions side by side.

Shown: each split's headline metrics with their 95 % intervals and the plain difference b − a; the paired
difference b − a with its patient-bootstrap interval (medpipe.paired_predictions) where both versions published
predictions.json for the same images (same split, dataset version and image order), else the gate's champion
comparison in b's gate.json when a was the champion b was gated against, else a sentence saying why there is
none (intervals of a difference cannot be derived from two separate intervals); and the config diff, key by key,
of the two versions' config.yaml.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from medpipe.contracts import HEADLINE_METRICS
from medpipe.run_folder import PAIRED_NAME
from medpipe_plugin.catalog import Catalog, VersionView, artifact_key, check_segment, load_catalog
from medpipe_plugin.metric_views import fmt, interval_text
from medpipe_plugin.pages import _page

if TYPE_CHECKING:
    from medpipe.store import Store

__all__ = ["add_compare_route", "config_diff", "parse_version_ref", "render_compare"]


def parse_version_ref(value: str | None, what: str) -> tuple[str, str]:
    """'<model>/<version>' from the query string; ValueError naming the parameter and the value."""
    parts = (value or "").split("/")
    if len(parts) != 2:
        raise ValueError(f"query parameter {what}={value!r}: expected <model>/<version>, e.g. resnet18/20260105T030000")
    return check_segment(parts[0], f"model name in {what}"), check_segment(parts[1], f"version in {what}")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) for every key whose values differ; "<unset>" where one lacks it."""
    fa, fb = _flatten(a or {}), _flatten(b or {})
    missing = "<unset>"
    return [(k, fa.get(k, missing), fb.get(k, missing)) for k in sorted(set(fa) | set(fb) if a or b else ())
            if fa.get(k, missing) != fb.get(k, missing)]


def _metric_rows(va: VersionView, vb: VersionView) -> str:
    parts = []
    for split in [s for s in va.splits if s in vb.splits]:
        ma, mb = va.split_metrics(split), vb.split_metrics(split)
        ca, cb = ma.get("confidence_intervals") or {}, mb.get("confidence_intervals") or {}
        for key in HEADLINE_METRICS:
            a, b = ma.get(key), mb.get(key)
            diff = f"{b - a:+.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "—"
            parts.append(f"<tr><td>{escape(split)}</td><th>{escape(key)}</th><td class=num>{fmt(a)} "
                         f'<span class="muted">{interval_text(ca.get(key))}</span></td><td class=num>{fmt(b)} '
                         f'<span class="muted">{interval_text(cb.get(key))}</span></td><td class=num>{diff}</td></tr>')
    return "".join(parts)


def _from_predictions(va: VersionView, vb: VersionView, predictions: list[dict[str, Any] | None]) -> str | None:
    """The paired difference from both versions' predictions.json; a sentence why not when they do not pair; None
    when either has none."""
    from medpipe.paired_predictions import paired_difference

    if any(p is None for p in predictions):
        return None
    try:
        result = paired_difference(predictions[0], predictions[1])
    except ValueError as exc:
        return f"<p>No paired difference: {escape(str(exc))}.</p>"
    rows = "".join(f"<tr><th>{escape(k)}</th><td class=num>{fmt((result.get(k) or {}).get('difference'))}</td>"
                   f"<td class=num>{interval_text((result.get(k) or {}).get('interval')) or '—'}</td></tr>"
                   for k in ("macro_auc", "balanced_accuracy"))
    return (f"<p>Paired on the same {len(predictions[0]['labels'])} images of the "
            f"{escape(str(predictions[0]['split']))} split ({fmt(result.get('groups'))} patients, "
            f"{fmt(result.get('kept'))} bootstrap resamples kept), {escape(vb.version)} minus "
            f"{escape(va.version)}:</p><table><tr><th>metric</th><th>difference (b − a)</th>"
            f"<th>95 % interval</th></tr>{rows}</table>")


def _paired(va: VersionView, vb: VersionView, predictions: list[dict[str, Any] | None] = (None, None)) -> str:
    """The paired difference from the versions' predictions, else the gate's paired comparison when one version
    was gated against the other; otherwise why there is none."""
    shown = _from_predictions(va, vb, list(predictions))
    if shown is not None:
        return shown
    for new, old in ((vb, va), (va, vb)):
        gate = new.gate
        champion = (gate.champion or {}) if gate else {}
        if (champion.get("model_name"), champion.get("version")) == (old.model_name, old.version):
            comparison = gate.champion_comparison or {}
            rows = "".join(f"<tr><th>{escape(k)}</th><td class=num>{fmt((v or {}).get('difference'))}</td>"
                           f"<td class=num>{interval_text((v or {}).get('interval')) or '—'}</td></tr>"
                           for k, v in comparison.items() if isinstance(v, dict) and "difference" in v)
            if rows:
                return (f"<p>Paired on the same images and patient resamples when {escape(new.model_name)} "
                        f"{escape(new.version)} was gated against champion {escape(old.model_name)} "
                        f"{escape(old.version)} ({escape(str(gate.split))} split; {escape(new.version)} minus "
                        f"{escape(old.version)}):</p><table><tr><th>metric</th><th>difference</th>"
                        f"<th>95 % interval</th></tr>{rows}</table>")
    same = (va.metrics and vb.metrics and va.metrics.manifest_hash and
            va.metrics.manifest_hash == vb.metrics.manifest_hash)
    data = ("both were evaluated on the same dataset version" if same else
            "they were evaluated on different (or unrecorded) dataset versions, so even their point figures are "
            "not strictly comparable")
    return ("<p>No paired difference: at least one version has no predictions.json (published before it existed, "
            "or its run did not evaluate the gate's split), and neither version's gate.json compared it "
            f"with the other; {data}. The b − a column is the difference of the point estimates only.</p>")


def render_compare(va: VersionView, vb: VersionView, diff: list[tuple[str, Any, Any]], root: str,
                   config_note: str, predictions: list[dict[str, Any] | None] = (None, None)) -> str:
    def head(v: VersionView) -> str:
        badge = ' <span class="badge champion">champion</span>' if v.is_champion else ""
        return f'<a href="{root}/models/{quote(v.model_name)}/{quote(v.version)}">{escape(v.model_name)} ' \
               f"{escape(v.version)}</a>{badge}"

    rows = _metric_rows(va, vb)
    metrics = (f"<table><tr><th>split</th><th>metric</th><th>a: {head(va)}</th><th>b: {head(vb)}</th><th>b − a</th>"
               f"</tr>{rows}</table>") if rows else "<p>The two versions share no evaluated split.</p>"
    diff_rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(x))}</td><td>{escape(str(y))}</td></tr>"
                        for k, x, y in diff)
    config = (f"<table><tr><th>key</th><th>a</th><th>b</th></tr>{diff_rows}</table>" if diff_rows
              else f"<p>{escape(config_note or 'The two configs are identical.')}</p>")
    body = (f'<p><a href="{root}/models">← Models</a> · <a href="{root}/runs">Runs</a></p>'
            f"<h1>Compare</h1><p>a: {head(va)}<br>b: {head(vb)}</p><h2>Headline metrics</h2>{metrics}"
            f"<h2>Paired difference</h2>{_paired(va, vb, predictions)}<h2>Config (differing keys)</h2>{config}")
    return _page(f"medpipe compare {va.version} {vb.version}", body)


def _config(store: Store, v: VersionView) -> dict[str, Any] | None:
    import yaml

    if "config.yaml" not in v.files:
        return None
    try:
        loaded = yaml.safe_load(store.get_bytes(artifact_key(v.model_name, v.version, "config.yaml")))
    except yaml.YAMLError:  # shown as "no readable config.yaml", like a missing one
        return None
    return loaded if isinstance(loaded, dict) else None


def _predictions(store: Store, v: VersionView) -> dict[str, Any] | None:
    """The version's predictions.json (medpipe.paired_predictions), None when it has none or it is unreadable."""
    import json

    if PAIRED_NAME not in v.files:
        return None
    try:
        loaded = json.loads(store.get_bytes(artifact_key(v.model_name, v.version, PAIRED_NAME)))
    except (json.JSONDecodeError, UnicodeDecodeError):  # shown like a missing one: no paired difference
        return None
    return loaded if isinstance(loaded, dict) else None


def add_compare_route(router: APIRouter, store: Callable[[], Store], root: Callable[[Request], str]) -> None:
    """GET /compare?a=<model>/<version>&b=<model>/<version> on the Models app's (authenticated) router."""
    from medpipe.store import StoreError

    def compare_page(request: Request, a: str | None = None, b: str | None = None) -> HTMLResponse:
        try:
            ref_a, ref_b = parse_version_ref(a, "a"), parse_version_ref(b, "b")
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            opened = store()
            catalog: Catalog = load_catalog(opened)
            views = [catalog.find(*ref) for ref in (ref_a, ref_b)]
            missing = [f"{m}/{v}" for (m, v), view in zip((ref_a, ref_b), views) if view is None]
            if missing:
                raise HTTPException(404, f"not in the registry {catalog.store_uri}: {', '.join(missing)}")
            configs = [_config(opened, view) for view in views]
            predictions = [_predictions(opened, view) for view in views]
        except StoreError as exc:
            raise HTTPException(502, f"cannot read the model registry: {exc}") from None
        lacking = [f"{v.model_name}/{v.version}" for v, c in zip(views, configs) if c is None]
        note = f"no readable config.yaml in {', '.join(lacking)}: nothing to compare" if lacking else ""
        diff = config_diff(*configs) if not lacking else []
        return HTMLResponse(render_compare(views[0], views[1], diff, root(request), note, predictions))

    router.add_api_route("/compare", compare_page, methods=["GET"], response_class=HTMLResponse)
