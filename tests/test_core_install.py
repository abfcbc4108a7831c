"""The core runs on its declared dependencies alone: validate -> run -> gate -> export -> publish -> score, in a
subprocess where every module outside pyproject.toml's [project] dependencies (and their own requirements) looks
uninstalled — Airflow, boto3 and pydicom included (tests/core_only.py does the hiding)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from string import Template

from core_only import declared_dependencies, dependency_closure, hidden_modules
from medpipe_testdata import REPO_ROOT, write_dataset

# The core path as a user runs it, one medpipe command line per step; $data, $run, ... are filled in below.
# Adjust here when the CLI changes.
_FAST = ["--set", "data.image_size=32", "--set", "data.cache_dir=$tmp/cache", "--set", "train.epochs=1",
         "--set", "train.batch_size=8", "--set", "train.device=cpu", "--set", "models.resnet18.weights=none",
         "--set", "evaluate.splits=[val]", "--set", "evaluate.bootstrap_resamples=50",
         # Sampling alone: with the default class weights too, one epoch leaves the models calling every image one
         # class, and the gate refuses a collapsed model (best_epoch_qualified).
         "--set", "train.class_weights=none"]
_LOOSE_GATE = ["--set", "gate.min_metrics={macro_auc: 0.0}", "--set", "gate.must_beat_baseline=false"]
STEPS = [
    ["validate", "$data", "--out", "$tmp/validation"],
    ["run", "--data", "$data", "--out", "$run", *_FAST],
    ["gate", "--run", "$run", "--store", "$store", *_LOOSE_GATE],
    ["export", "--run", "$run", "--out", "$version", "--version", "v1"],
    ["publish", "--version-dir", "$version", "--store", "$store"],
    ["score", "--model", "champion", "--input", "$data/val", "--output", "$predictions", "--store", "$store"],
]
# Optional (extras) or orchestration: none of them may be needed by the steps above.
MUST_HIDE = ["airflow", "boto3", "botocore", "pydicom", "cadwyn", "fastapi"]
_PYPROJECT = REPO_ROOT / "pyproject.toml"


def test_core_dependencies_leave_out_the_extras():
    closure, missing = dependency_closure(declared_dependencies(_PYPROJECT))
    assert not missing, f"core dependencies not installed in this venv: {missing}"
    assert {"torch", "pydantic", "pyyaml", "captum", "onnxscript"} <= closure
    assert not {"apache-airflow", "boto3", "pydicom", "cadwyn"} & closure
    installed = [m for m in MUST_HIDE if importlib.util.find_spec(m) is not None]
    assert installed and set(installed) <= set(hidden_modules(closure))


def test_core_runs_end_to_end_without_extras(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=4, size=40)
    places = {"tmp": tmp_path, "data": data, "run": tmp_path / "run", "store": tmp_path / "store",
              "version": tmp_path / "version", "predictions": tmp_path / "predictions.csv"}
    steps = [[Template(arg).substitute(places) for arg in argv] for argv in STEPS]
    spec = {"pyproject": str(_PYPROJECT), "must_hide": MUST_HIDE, "steps": steps}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "2", "MPLCONFIGDIR": str(tmp_path / "mpl")}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "core_only.py"), json.dumps(spec)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("REPORT "))
    assert report["hidden"] > 0 and not report["missing"]
    with open(places["predictions"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list((data / "val").rglob("*.png"))) and {r["model_version"] for r in rows} == {"v1"}
    assert (places["store"] / "models").is_dir() and (tmp_path / "validation" / "validation.json").is_file()

