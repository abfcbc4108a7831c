"""A tiny real training run shared by the gate/export/score tests: both models trained and evaluated once.

Import the fixture in a test module with `from shipping_fixtures import trained_run  # noqa: F401`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from medpipe_testdata import write_dataset
from medpipe.config import Config, load_config


@dataclass
class TrainedRun:
    data_root: Path
    cache_dir: Path
    cfg: Config
    checkpoints: dict[str, Path]  # model name -> best.pt
    metrics: dict[str, Path]  # model name -> metrics.json
    work: Path  # a module-scoped scratch folder


def shipping_config(work: Path, *extra: str) -> Config:
    """The fast settings of conftest.fast_config, rooted in `work` (module-scoped fixtures cannot use tmp_path)."""
    return load_config(None, [
        "data.image_size=32",
        f"data.cache_dir={work / 'cache'}",
        "train.epochs=2",
        "train.batch_size=8",
        "train.patience=5",
        "train.device=cpu",
        # Sampling alone balances the classes: with the default class weights on top, the balanced decision's logit
        # offset makes these 2-epoch models call every image normal, and the gate refuses a collapsed model.
        "train.class_weights=none",
        "models.resnet18.weights=none",
        "evaluate.splits=[val]",
        f"store.uri={work / 'store'}",
        "export.parity_images=16",
        *extra,
    ])


PRIOR_KEYS = ("prior_correction", "training_prior", "output_prior", "train_class_counts")  # exported to ONNX


def checkpoint_with_meta(checkpoint: Path, dest: Path, drop: tuple[str, ...] = (), **changes: object) -> Path:
    """A copy of a real checkpoint whose meta lacks `drop` and has `changes` (e.g. one written before a key
    existed); the weights are untouched."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key in drop:
        del state["meta"][key]
    state["meta"].update(changes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    return dest


def onnx_with_metadata(model: Path, dest: Path, **values: str) -> Path:
    """A copy of an exported model with some metadata_props values replaced (as a hand-edited file would be)."""
    import onnx

    proto = onnx.load(str(model))
    entries = {entry.key: entry for entry in proto.metadata_props}
    for key, value in values.items():
        entry = entries.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(dest))
    return dest


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """custom_cnn and resnet18 trained for 2 epochs on 32 px images and evaluated on val (~15 s on 2 cores)."""
    from medpipe.data.cache import build_cache
    from medpipe.evaluate.stage import evaluate_model
    from medpipe.train import train_model

    work = tmp_path_factory.mktemp("shipping")
    data_root = write_dataset(work / "data", per_class=8, size=40)
    cfg = shipping_config(work)
    cache_dir = build_cache(data_root, cfg)
    checkpoints, metrics = {}, {}
    for name in ("custom_cnn", "resnet18"):
        out = train_model(cache_dir, name, cfg, work / "models" / name)
        checkpoints[name] = out / "best.pt"
        metrics[name] = evaluate_model(out / "best.pt", cache_dir, cfg, out / "eval")
    return TrainedRun(data_root=data_root, cache_dir=cache_dir, cfg=cfg, checkpoints=checkpoints, metrics=metrics,
                      work=work)
