"""Stage a release folder: everything a registry version holds beside model.onnx.

`medpipe export` and the retraining DAG both build the folder that `medpipe publish` uploads; this is the one
place that knows what goes in it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from medpipe.fileio import atomic_output

__all__ = ["stage_release_files", "RELEASE_EVAL_FILES"]

RELEASE_EVAL_FILES = ("metrics.json", "model_card.md")  # from <model>/eval/, required


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
        _copy(Path(gate_path), out_dir / "gate.json")
    if config_path is not None and Path(config_path).is_file():
        _copy(Path(config_path), out_dir / "config.yaml")
    for plot in sorted((eval_dir / "plots").glob("*.png")):
        _copy(plot, out_dir / "plots" / plot.name)
    return out_dir
