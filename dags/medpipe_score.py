"""
### medpipe_score — score a folder of images with the champion model

Runs whenever `medpipe_retrain` publishes a new champion (it is scheduled on the Asset `medpipe://champion`)
and on demand. Tasks: resolve the config → pin the version to score with, checked against the registry: the
version the triggering Asset event names (its `extra`: model_name, version, sha256), so two quick publishes each
get scored with their own model; a manual run uses the champion pointer → download that version's model (FP32 or
INT8 by `score.precision`), verify its sha256 and score every image under `input` with ONNX Runtime → upload the
predictions CSV (and the CSV of files that could not be scored) to the store as `scores/<run id>/`.

**Params**: `input` (folder of images; default `$MEDPIPE_SCORE_INBOX` or the bundled sample), `config`,
`overrides`, `store_uri`, `work_root` (as in `medpipe_retrain`). Outputs of a run live in
`<work_root>/<run id>/`; the uploaded keys are keyed by run id, so a retry rewrites the same objects.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from medpipe_plugin import k8s, settings
from medpipe_plugin.aws import with_store_connection
from medpipe_plugin.dag_common import (announced_model, common_params, dag_arguments, default_args, load_run_config,
                                      resolve_config, run_dir)


DEFAULT_ARGS = default_args(retry_delay=timedelta(minutes=1), max_retry_delay=timedelta(minutes=15))


@task
@with_store_connection
def resolve_champion(config_path: str) -> dict[str, Any]:
    """Pin the version to score with, checked against the registry without downloading it (the score task fetches
    the file it needs): the version the triggering champion Asset event announced (and its sha256), or for a
    manual run the champion pointer."""
    from medpipe.registry import locate_model
    from medpipe.store import open_store

    announced = announced_model(get_current_context().get("triggering_asset_events"))
    ref = f"{announced['model_name']}/{announced['version']}" if announced else "champion"
    info = locate_model(open_store(load_run_config(config_path).store), ref)
    if announced and announced.get("sha256") and announced["sha256"] != info["sha256"]:
        raise AirflowFailException(f"{ref}: the registry's model.onnx has sha256 {info['sha256']}, the publish "
                                   f"event announced {announced['sha256']}; refusing to score with it")
    return {"model_name": info["model_name"], "version": info["version"], "sha256": info["sha256"],
            "source": "asset event" if announced else "champion pointer"}


@task(pool=settings.gpu_pool(), pool_slots=1, queue=settings.gpu_queue(), **k8s.pod_placement(gpus=1))
@with_store_connection  # score_folder downloads the version from the store itself
def score(champion: dict[str, Any], config_path: str) -> dict[str, Any]:
    """Score every image of the input folder; unreadable files are listed in the errors CSV, not fatal.

    The version resolve_champion checked, FP32 or INT8 by score.precision on the device of THIS task (auto: INT8
    on a CPU worker, FP32 on a GPU one; medpipe.precision), downloaded and sha256-verified here.
    `resume=True`: a retry keeps the rows the failed try already wrote and scores only the rest.
    """
    from medpipe.score import score_folder

    input_dir = get_current_context()["params"]["input"]
    return score_folder(f"{champion['model_name']}/{champion['version']}", input_dir, run_dir() / "predictions.csv",
                        load_run_config(config_path), resume=True)


@task
@with_store_connection
def upload_results(summary: dict[str, Any], config_path: str) -> list[str]:
    """Put predictions.csv and predictions.errors.csv into the store under scores/<run id>/; returns their URIs."""
    from medpipe.store import open_store

    store = open_store(load_run_config(config_path).store)
    prefix = f"scores/{settings.run_folder_name(get_current_context()['run_id'])}"
    uris = []
    for local in (Path(summary["output"]), Path(summary["errors_file"])):
        store.put_file(f"{prefix}/{local.name}", local)
        uris.append(store.uri(f"{prefix}/{local.name}"))
    return uris


@dag(
    dag_id="medpipe_score",
    schedule=[settings.CHAMPION_ASSET],
    default_args=DEFAULT_ARGS,
    tags=["medpipe", "scoring"],
    doc_md=__doc__,
    **dag_arguments(),
    params={
        "input": Param(settings.score_inbox(), type="string", description="folder of images to score"),
        **common_params("score.batch_size=128"),
    },
)
def medpipe_score() -> None:
    config_path = resolve_config()
    upload_results(score(resolve_champion(config_path), config_path), config_path)


medpipe_score()
