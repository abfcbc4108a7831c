"""
### medpipe_inbox — score new image folders as they arrive

Every `$MEDPIPE_INBOX_POLL_MIN` minutes (default 10; no schedule while `$MEDPIPE_INBOX` is unset: trigger it by
hand with the `inbox` param) the DAG looks at the inbox — a folder or `s3://bucket/prefix` — for batches:
folders directly under it that hold a `_READY` marker, which the exporting tool writes LAST (medpipe.inbox). A
folder without the marker is still being written and is never touched.

`find_batches` lists the complete batches the current champion version has not scored (and, unless `rescore` is
set, that no earlier version scored either), fixing the version for the whole run; `score_batch` is mapped over
them, one task per batch (pool `gpu`, queue `$MEDPIPE_GPU_QUEUE`), each downloading and verifying that version's
model.onnx and writing `scores/<model>/<version>/<batch>/{errors.csv, summary.json, predictions.csv}` to the
model store, predictions.csv last. summary.json has the batch's counts, errors, predicted-class distribution,
mean probabilities and its drift from the training data (PSI against the model's published reference.json,
threshold 0.25, medpipe.drift): a drifted batch is logged as a WARNING, and fails its task with
`score.fail_on_drift: true`. Cheap polling rather than a deferrable sensor: one short task per interval,
no triggerer needed, and `max_active_runs=1` keeps two polls from taking the same batch. A rerun scores nothing
twice; a retried batch keeps the rows its failed try wrote.

**Params**: `inbox`, `rescore` (score batches an earlier version scored; default off), `config`, `overrides`,
`store_uri`, `work_root` (as in `medpipe_retrain`).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from medpipe_plugin import k8s, settings
from medpipe_plugin.aws import with_store_connection
from medpipe_plugin.dag_common import (common_params, dag_arguments, default_args, load_run_config, resolve_config,
                                      run_dir)

_logger = logging.getLogger(__name__)

DEFAULT_ARGS = default_args(retry_delay=timedelta(minutes=1), max_retry_delay=timedelta(minutes=15))


@task
@with_store_connection
def find_batches(config_path: str) -> list[dict[str, str]]:
    """Complete batches the champion has not scored yet, each with the model version that will score it."""
    from medpipe.inbox import open_inbox, pending_batches
    from medpipe.registry import read_champion
    from medpipe.store import open_store

    params = get_current_context()["params"]
    cfg = load_run_config(config_path)
    store = open_store(cfg.store)
    champion = read_champion(store)
    if champion is None:
        _logger.warning("no champion in %s yet: nothing is scored", store.uri())
        return []
    inbox = open_inbox(params["inbox"], cfg.store)
    batches = pending_batches(inbox, store, champion["model_name"], champion["version"], bool(params["rescore"]))
    _logger.info("%d batch(es) to score with %s/%s: %s", len(batches), champion["model_name"], champion["version"],
                 ", ".join(batches) or "none")
    return [{"batch": b, "model_name": champion["model_name"], "version": champion["version"]} for b in batches]


@task(pool=settings.gpu_pool(), pool_slots=1, queue=settings.gpu_queue(), **k8s.pod_placement(gpus=1),
      map_index_template="{{ task.op_kwargs['item']['batch'] }}")
@with_store_connection
def score_batch(item: dict[str, str], config_path: str) -> dict[str, Any]:
    """Score one batch with the version find_batches chose (downloaded, sha256-checked) into the store."""
    from medpipe.inbox import open_inbox, read_reference, score_batch as _score_batch
    from medpipe.precision import resolve_for_scoring
    from medpipe.store import open_store

    cfg = load_run_config(config_path)
    store = open_store(cfg.store)
    work = run_dir() / "batches" / item["batch"]
    # FP32 or INT8 by score.precision on this task's device, like `medpipe score` (medpipe.precision).
    onnx_path, source = resolve_for_scoring(f"{item['model_name']}/{item['version']}", store, work / "model",
                                            cfg.score.precision, cfg.score.provider)
    inbox = open_inbox(get_current_context()["params"]["inbox"], cfg.store)
    result = _score_batch(inbox, item["batch"], onnx_path, item["model_name"], item["version"], store, cfg, work,
                          reference=read_reference(store, item["model_name"], item["version"]), registry_source=source)
    drift = result.summary.get("drift") or {}
    if drift.get("drifted") and cfg.score.fail_on_drift:  # the outputs are kept; the failure is the alarm
        raise AirflowFailException(f"batch {result.batch} drifted from the training data: PSI {drift['psi']} over "
                                   f"{drift['threshold']} (score.fail_on_drift); scores in {store.uri(result.prefix)}")
    return {"batch": result.batch, "status": result.status, "scores": store.uri(result.prefix), **result.summary}


@dag(
    dag_id="medpipe_inbox",
    schedule=settings.inbox_schedule(),
    default_args=DEFAULT_ARGS,
    tags=["medpipe", "scoring"],
    doc_md=__doc__,
    **dag_arguments(),
    params={
        "inbox": Param(settings.inbox(), type="string", description="folder or s3://bucket/prefix of batches"),
        "rescore": Param(False, type="boolean", description="also score batches an earlier version scored"),
        **common_params("score.batch_size=128"),
    },
)
def medpipe_inbox() -> None:
    config_path = resolve_config()
    score_batch.partial(config_path=config_path).expand(item=find_batches(config_path))


medpipe_inbox()
