"""The run folder owns its layout and identity: a finished run is never rewritten, and a rerun into a folder of
another identity is refused before anything is written, naming what differs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medpipe.cli import main
from medpipe.config import load_config
from medpipe.run_folder import RUN_RECORD, RunFolder, RunFolderError, default_run_dir
from medpipe.stages import run_pipeline, start_run
from medpipe_testdata import write_dataset

FAST = ["data.image_size=32", "train.epochs=1", "train.batch_size=8", "train.device=cpu",
        "models.names=[custom_cnn]", "evaluate.splits=[val]", "evaluate.bootstrap_resamples=20",
        "evaluate.explain_per_class=0", "evaluate.outside_region_check=false"]


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under root with its modification time and content: equal snapshots = nothing was written."""
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    data = write_dataset(tmp_path / "data", per_class=4, size=32)
    settings = [*FAST, f"data.cache_dir={tmp_path / 'cache'}"]
    run_pipeline(data, load_config(None, settings), tmp_path / "run")
    return data, tmp_path / "run", settings


def test_a_rerun_with_other_data_or_settings_is_refused_before_anything_is_written(finished_run, tmp_path, capsys):
    data, run, settings = finished_run
    before = _snapshot(run)
    other = write_dataset(tmp_path / "other", per_class=4, size=32, seed=3)
    sets = [arg for s in settings for arg in ("--set", s)]

    assert main(["run", "--data", str(other), "--out", str(run), *sets]) == 1
    err = capsys.readouterr().err
    assert "holds another run" in err and "data: manifest" in err and "nothing was written" in err
    assert "Choose a new --out" in err

    assert main(["run", "--data", str(data), "--out", str(run), *sets, "--set", "train.epochs=3",
                 "--set", "train.lr=0.01"]) == 1
    err = capsys.readouterr().err
    assert "settings: train.epochs: 1 -> 3; train.lr: 0.001 -> 0.01" in err and "data: manifest" not in err
    assert _snapshot(run) == before


def test_a_finished_run_with_the_same_identity_is_returned_as_it_is(finished_run):
    data, run, settings = finished_run
    before = _snapshot(run)
    # Where things are kept (cache, store) is not part of the identity.
    same = load_config(None, [*settings, "store.uri=elsewhere"])
    assert run_pipeline(data, same, run) == RunFolder(run).summary_path
    assert _snapshot(run) == before


def test_other_code_is_named_in_the_refusal(finished_run):
    data, run, settings = finished_run
    record = json.loads((run / RUN_RECORD).read_text())
    record["identity"]["code_commit"] = "0" * 40  # as if the run was made by another commit
    (run / RUN_RECORD).write_text(json.dumps(record))
    with pytest.raises(RunFolderError, match=r"code: medpipe \S+ commit 0000000000"):
        start_run(run, load_config(None, settings), data)


def test_an_interrupted_run_continues_only_with_resume(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=4, size=32)
    cfg = load_config(None, [*FAST, f"data.cache_dir={tmp_path / 'cache'}"])
    run = start_run(tmp_path / "run", cfg, data)  # started, then (say) killed before any stage finished
    assert sorted(p.name for p in run.root.iterdir()) == ["config.yaml", RUN_RECORD, "timings"]  # start's duration
    with pytest.raises(RunFolderError, match="unfinished run with the same data, settings and code; pass --resume"):
        run_pipeline(data, cfg, run.root)
    assert run_pipeline(data, cfg, run.root, resume=True) == run.summary_path
    assert run.finished and run.metrics_path("custom_cnn").is_file()


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=2, size=32)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not empty and holds no run.json"):
        start_run(tmp_path / "notes", load_config(None, FAST), data)
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]
    with pytest.raises(RunFolderError, match="is not a medpipe run folder"):
        RunFolder.open(tmp_path / "notes")


def test_the_default_out_is_a_new_folder_per_run(tmp_path, monkeypatch):
    first, second = default_run_dir(), default_run_dir()
    assert first.parent == Path("runs") and first != second and "latest" not in str(first)
    data = write_dataset(tmp_path / "data", per_class=4, size=32)
    monkeypatch.chdir(tmp_path)
    sets = [arg for s in [*FAST, f"data.cache_dir={tmp_path / 'cache'}"] for arg in ("--set", s)]
    assert main(["run", "--data", str(data), *sets]) == 0
    (made,) = (tmp_path / "runs").iterdir()
    assert RunFolder.open(made).finished


def test_a_run_folder_from_before_run_json_is_read_for_gate_and_export(finished_run):
    """Folders written before run.json existed keep working: their config.yaml and summary.json's data root."""
    data, run, _ = finished_run
    os.remove(run / RUN_RECORD)
    legacy = RunFolder.open(run)
    assert legacy.identity() is None and legacy.data_root() == data.resolve()
    assert legacy.config().data.image_size == 32
    with pytest.raises(RunFolderError, match="older medpipe"):
        start_run(run, legacy.config(), data)


def test_every_path_is_inside_the_run_folder(tmp_path):
    run = RunFolder(tmp_path / "r")
    paths = [run.config_path, run.record_path, run.validation_dir, run.model_dir("resnet18"),
             run.checkpoint("resnet18"), run.checkpoint("resnet18", "last"), run.history_path("resnet18"),
             run.eval_dir("resnet18"), run.metrics_path("resnet18"), run.summary_path, run.summary_md_path,
             run.gate_path, run.release_dir]
    assert all(p.is_relative_to(run.root) for p in paths)
    assert len(set(paths)) == len(paths)
    with pytest.raises(ValueError, match="expected 'best' or 'last'"):
        run.checkpoint("resnet18", "final")
