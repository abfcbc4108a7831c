"""The Runs view: every retraining run the store recorded (runs/<run_id>/record.json, medpipe.run_record), newest
first, with the gate's verdict and reasons, the challenger's primary metric, the champion before and after, a link
to the Airflow run and a detail page; above them the trend chart (trend_chart.py).

Routes are added to the Models app's router (app.py), so they sit behind the same `requires_authenticated()`
dependency. Every value from the store passes through html.escape; run ids from URLs through check_segment.
"""

from __future__ import annotations

import logging
from html import escape
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from medpipe.contracts import HEADLINE_METRICS
from medpipe_plugin.catalog import check_segment
from medpipe_plugin.metric_views import fmt as _fmt, interval_text
from medpipe_plugin.pages import _page
from medpipe_plugin.trend_chart import trend_svg

if TYPE_CHECKING:
    from medpipe.contracts import RunRecord
    from medpipe.store import Store

__all__ = ["add_run_routes", "airflow_run_url", "render_run", "render_runs"]

_logger = logging.getLogger(__name__)


def airflow_run_url(root: str, mount: str, dag_id: str, dag_run_id: str) -> str:
    """The run in Airflow 3's UI, `/dags/<dag_id>/runs/<run_id>` on the API server that mounts this app at
    `mount` (the same pattern as airflow.utils.helpers.build_airflow_dagrun_url)."""
    base = root[: -len(mount)] if mount and root.endswith(mount) else root
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(dag_run_id, safe='')}"


def _interval_text(interval: Any) -> str:
    text = interval_text(interval)
    return f' <span class="muted" title="95 % interval, bootstrap over patients">{text}</span>' if text else ""


def _pointer(value: dict[str, str] | None, root: str, versions: set[tuple[str, str]]) -> str:
    """model/version, linked to its version page when the registry holds it (a link must answer 200)."""
    if not value:
        return '<span class="muted">none</span>'
    name, version = str(value.get("model_name")), str(value.get("version"))
    text = f"{escape(name)}/{escape(version)}"
    if (name, version) in versions:
        return f'<a href="{root}/models/{quote(name)}/{quote(version)}">{text}</a>'
    return text


def _verdict(record: RunRecord) -> str:
    badge = ('<span class="badge pass">passed</span>' if record.status == "passed"
             else f'<span class="badge fail">{escape(record.status)}</span>')
    reasons = "".join(f"<li>{escape(str(r))}</li>" for r in record.gate.get("reasons") or [])
    return badge + (f"<ul>{reasons}</ul>" if reasons else "")


def _airflow_link(record: RunRecord, root: str, mount: str) -> str:
    if not (record.dag_id and record.dag_run_id):
        return '<span class="muted">CLI</span>'
    # target=_top: inside the Airflow UI this page is framed (Browse → Runs); the run opens as the whole UI.
    return (f'<a target="_top" href="{escape(airflow_run_url(root, mount, record.dag_id, record.dag_run_id))}">'
            f"{escape(record.dag_id)}<br>{escape(record.dag_run_id)}</a>")


def _run_url(root: str, record: RunRecord) -> str:
    return f"{root}/runs/{quote(record.run_id)}"


def _run_row(record: RunRecord, root: str, mount: str, versions: set[tuple[str, str]]) -> str:
    value, interval = record.primary()
    metric = f"{escape(str(record.primary_metric))} ({escape(str(record.split))}): " if record.primary_metric else ""
    return (f'<tr id="run-{escape(record.run_id)}"><td><a href="{_run_url(root, record)}">{escape(record.run_id)}</a>'
            f"</td><td>{_fmt(record.started_at)}</td><td>{_verdict(record)}</td>"
            f"<td>{escape(str(record.gate.get('challenger')))}</td><td class=num>{metric}{_fmt(value)}"
            f"{_interval_text(interval)}</td><td>{_pointer(record.champion_before, root, versions)} → "
            f"{_pointer(record.champion_after, root, versions)}</td>"
            f"<td>{_pointer(record.published, root, versions)}</td><td>{_airflow_link(record, root, mount)}</td></tr>")


def render_runs(records: list[RunRecord], problems: list[str], store_uri: str, root: str, mount: str,
                versions: set[tuple[str, str]]) -> str:
    """Every recorded run, newest first, under the trend of the primary metric."""
    rows = "".join(_run_row(r, root, mount, versions) for r in records)
    table = ("<table><thead><tr><th>run</th><th>started</th><th>verdict</th><th>challenger</th>"
             "<th>primary metric</th><th>champion before → after</th><th>published</th><th>Airflow run</th></tr>"
             f"</thead><tbody>{rows}</tbody></table>") if records else "<p>No runs recorded yet.</p>"
    listed = "".join(f'<li class="problem">{escape(p)}</li>' for p in problems)
    body = (f'<p><a href="{root}/models">← Models</a></p><h1>Runs</h1><p class=muted>Registry {escape(store_uri)} · '
            f"{len(records)} run(s)</p>{trend_svg(records)}{table}"
            + (f"<h2>Problems</h2><ul>{listed}</ul>" if listed else ""))
    return _page("medpipe runs", body)


def _models_table(record: RunRecord) -> str:
    parts = []
    for name, entry in record.models.items():
        for split, values in sorted((entry.get("splits") or {}).items()):
            cells = "".join(f'<td class=num>{_fmt((values.get(k) or {}).get("value"))}'
                            f'{_interval_text((values.get(k) or {}).get("interval"))}</td>' for k in HEADLINE_METRICS)
            mark = ' <span class="badge champion">challenger</span>' if name == record.gate.get("challenger") else ""
            parts.append(f"<tr><td>{escape(name)}{mark}</td><td>{escape(split)}</td><td>{_fmt(entry.get('device'))}"
                         f"</td>{cells}</tr>")
    header = "".join(f"<th>{escape(k)}</th>" for k in HEADLINE_METRICS)
    return f"<table><tr><th>model</th><th>split</th><th>device</th>{header}</tr>{''.join(parts)}</table>"


def _facts(pairs: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def render_run(record: RunRecord, root: str, mount: str, versions: set[tuple[str, str]]) -> str:
    """One run: verdict, every model's headline metrics with intervals, champion before/after, stages, identity."""
    stages = "".join(f"<tr><td>{escape(t)}</td><td class=num>{s:.1f}</td></tr>"
                     for t, s in record.stage_seconds.items())
    hardware = record.hardware or {}
    champion_metric = record.gate.get("champion_metric")
    facts = _facts([
        ("verdict", _verdict(record)), ("challenger", escape(str(record.gate.get("challenger")))),
        ("primary metric", f"{_fmt(record.primary_metric)} on {_fmt(record.split)}"),
        ("champion's primary metric, re-scored", _fmt(champion_metric)),
        ("champion before → after", f"{_pointer(record.champion_before, root, versions)} → "
                                    f"{_pointer(record.champion_after, root, versions)}"),
        ("published", _pointer(record.published, root, versions)), ("Airflow run", _airflow_link(record, root, mount)),
        ("started / finished", f"{_fmt(record.started_at)} / {_fmt(record.finished_at)}"),
        ("medpipe / commit", f"{_fmt(record.medpipe_version)} / {_fmt(record.code_commit)}"),
        ("data manifest", _fmt(record.data_manifest_hash)), ("settings hash", _fmt(record.config_hash)),
        ("hardware", f"{_fmt(hardware.get('cpu_count'))} CPUs, {_fmt(hardware.get('device_kind'))}"
                     + "".join(f", {escape(str(g))}" for g in hardware.get("gpus") or [])),
    ])
    body = (f'<p><a href="{root}/runs">← all runs</a> · <a href="{root}/models">Models</a></p>'
            f"<h1>Run {escape(record.run_id)}</h1>{facts}<h2>Models</h2>{_models_table(record)}"
            f"<h2>Stages (seconds)</h2><table>{stages}</table>")
    return _page(f"medpipe run {record.run_id}", body)


def _registry_versions(store: Store) -> set[tuple[str, str]]:
    """(model, version) of every finished version (manifest written), for links that must not 404."""
    from medpipe.registry import MANIFEST_NAME, MODELS_PREFIX

    keys = store.list(MODELS_PREFIX)
    return {tuple(k[len(MODELS_PREFIX):].split("/")[:2]) for k in keys if k.endswith("/" + MANIFEST_NAME)
            and k.count("/") == 3}


def add_run_routes(router: APIRouter, store: Callable[[], Store], root: Callable[[Request], str], mount: str) -> None:
    """GET /runs and /runs/{run_id} on the Models app's (authenticated) router."""
    from medpipe.contracts import ContractError
    from medpipe.run_record import list_run_records, read_run_record
    from medpipe.store import ObjectNotFoundError, StoreError

    def runs_page(request: Request) -> HTMLResponse:
        try:
            opened = store()
            records, problems = list_run_records(opened)
            versions = _registry_versions(opened)
        except StoreError as exc:
            raise HTTPException(502, f"cannot read the run records: {exc}") from None
        return HTMLResponse(render_runs(records, problems, opened.uri(), root(request), mount, versions))

    def run_page(request: Request, run_id: str) -> HTMLResponse:
        try:
            check_segment(run_id, "run id")
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            opened = store()
            record = read_run_record(opened, run_id)
            versions = _registry_versions(opened)
        except ObjectNotFoundError:
            raise HTTPException(404, f"run {run_id} has no record in the registry") from None
        except ContractError as exc:
            raise HTTPException(502, str(exc)) from None
        except StoreError as exc:
            raise HTTPException(502, f"cannot read the record of run {run_id}: {exc}") from None
        return HTMLResponse(render_run(record, root(request), mount, versions))

    router.add_api_route("/runs", runs_page, methods=["GET"], response_class=HTMLResponse)
    router.add_api_route("/runs/{run_id}", run_page, methods=["GET"], response_class=HTMLResponse)
