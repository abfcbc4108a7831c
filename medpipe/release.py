"""Stage a release folder: everything a registry version holds beside model.onnx.

`medpipe export` and the retraining DAG both build the folder that `medpipe publish` uploads; this is the one
place that knows what goes in it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medpipe.fileio import atomic_output
from medpipe.run_folder import CONFIG_NAME, GATE_NAME, ONNX_NAME, PARITY_NAME, RELEASE_EVAL_FILES

__all__ = ["stage_release_files", "read_release", "RELEASE_EVAL_FILES"]


def _copy(src: Path, dest: Path) -> None:
    with atomic_output(dest) as tmp:
        shutil.copyfile(src, tmp)


def stage_release_files(eval_dir: str | Path, out_dir: str | Path, gate_path: str | Path | None = None,
                        config_path: str | Path | None = None) -> Path:
    """Copy metrics, model card, plots, the gate decision and the resolved config into `out_dir` (atomically).

    Args:
        eval_dir: the model's evaluation folder (metrics.json, model_card.md, plots/).
        out_dir: the release folder (model.onnx is written there by export, last).
        gate_path: gate.json of the run, copied when given and present.
        config_path: the resolved config, copied as config.yaml when given and present.

    Returns:
        out_dir.
    """
    eval_dir, out_dir = Path(eval_dir), Path(out_dir)
    for name in RELEASE_EVAL_FILES:
        if not (eval_dir / name).is_file():
            raise FileNotFoundError(f"{eval_dir / name} does not exist: evaluate the model first")
        _copy(eval_dir / name, out_dir / name)
    if gate_path is not None and Path(gate_path).is_file():
        _copy(Path(gate_path), out_dir / GATE_NAME)
    if config_path is not None and Path(config_path).is_file():
        _copy(Path(config_path), out_dir / CONFIG_NAME)
    for plot in sorted((eval_dir / "plots").glob("*.png")):
        _copy(plot, out_dir / "plots" / plot.name)
    return out_dir


def read_release(out_dir: str | Path) -> dict[str, str] | None:
    """{"version_dir", "model_name", "version"} of a finished export in `out_dir` (model.onnx is written last, with
    parity.json just before it naming the model and version), or None when there is none."""
    out_dir = Path(out_dir)
    if not (out_dir / ONNX_NAME).is_file():
        return None
    parity_path = out_dir / PARITY_NAME
    if not parity_path.is_file():
        raise FileNotFoundError(f"{out_dir / ONNX_NAME} has no {PARITY_NAME} beside it: not a medpipe export")
    parity = json.loads(parity_path.read_text())
    return {"version_dir": str(out_dir), "model_name": str(parity["model_name"]), "version": str(parity["version"])}
