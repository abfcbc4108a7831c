"""The ensemble candidate: the mean of the run's models' probabilities, used as one model.

On held-out data the plain mean of two models' probabilities beat either model (balanced accuracy 0.829 vs
0.787/0.782, macro AUC 0.947 vs 0.929/0.926): their errors are partly independent. Each member's probabilities
already carry its own balanced-decision logit offset (medpipe.models.LogitOffset, active in eval mode), so every
member contributes on the same footing and the mean needs no weights.

The ensemble is a module whose output is log(mean of the members' softmax): the softmax of that is the mean again
(its rows sum to 1), so it goes through `medpipe.evaluate.predict.probabilities` like any logits model: evaluation,
flip TTA (linear, so the mean over mirrors of the mean over members is the mean over members of each one's TTA
probabilities), the exported ONNX graph and its parity check all compute the same thing.

Its "checkpoint" is a record (models/ensemble/ensemble.json, `medpipe.contracts.EnsembleRecord`) naming the
members' best.pt and their sha256; loading refuses a member whose file changed since.

torch is imported inside the functions: medpipe.export, which imports this module, is on the CLI's start-up path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medpipe.contracts import CheckpointMeta, EnsembleRecord
from medpipe.evaluate.predict import probabilities
from medpipe.fileio import sha256_file
from medpipe.run_folder import ENSEMBLE_NAME, ENSEMBLE_RECORD
from medpipe.train import load_checkpoint

if TYPE_CHECKING:
    import torch

__all__ = ["ENSEMBLE_NAME", "ensemble_module", "write_ensemble_record", "load_ensemble", "load_model",
           "member_metadata"]

_logger = logging.getLogger(__name__)

# log() of a probability that underflowed to 0 would be -inf; softmax handles that, but a row of them would not.
_TINY = 1e-38


def ensemble_module(members: list["torch.nn.Module"]) -> "torch.nn.Module":
    """A module returning log(mean_m softmax(member_m(x))): logits whose softmax is the members' mean probability."""
    import torch

    class EnsembleModel(torch.nn.Module):
        def __init__(self, inner: list[torch.nn.Module]) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(inner)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = torch.stack([probabilities(member, x) for member in self.members]).mean(dim=0)
            return torch.log(mean.clamp_min(_TINY))

    return EnsembleModel(members).eval()


def _shared(metas: dict[str, CheckpointMeta], key: str) -> Any:
    values = {name: meta.get(key) for name, meta in metas.items()}
    if len({repr(v) for v in values.values()}) > 1:
        raise ValueError(f"the ensemble's members disagree on {key}: {values}; they must read the same images the "
                         "same way (train them in one run)")
    return next(iter(values.values()))


def write_ensemble_record(checkpoints: dict[str, Path], path: str | Path) -> Path:
    """Write ensemble.json for these members (name -> best.pt); kept as it is when it names the same files.

    Raises:
        ValueError: fewer than two members, or members with other classes, image size, preprocessing or data.
    """
    path = Path(path)
    if len(checkpoints) < 2:
        raise ValueError(f"an ensemble needs two or more models, got {sorted(checkpoints)}")
    metas = {name: load_checkpoint(ckpt, "cpu")[1] for name, ckpt in checkpoints.items()}
    record = EnsembleRecord(
        members=[{"model": name, "checkpoint": Path(os.path.relpath(ckpt, path.parent)).as_posix(),
                  "checkpoint_sha256": sha256_file(ckpt)} for name, ckpt in checkpoints.items()],
        classes=list(_shared(metas, "classes")), image_size=int(_shared(metas, "image_size")),
        manifest_hash=_shared(metas, "manifest_hash"), preprocess_version=_shared(metas, "preprocess_version"))
    if path.is_file() and EnsembleRecord.read(path).to_dict() == record.to_dict():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return record.write(path)


def load_ensemble(path: str | Path, device: str = "cpu") -> tuple["torch.nn.Module", EnsembleRecord]:
    """The ensemble module of an ensemble.json, in eval mode on `device`, and its record.

    Raises:
        ValueError: a member's checkpoint is not the file the record names (its sha256 changed).
    """
    path = Path(path)
    record = EnsembleRecord.read(path)
    models = []
    for member in record.members:
        checkpoint = path.parent / member["checkpoint"]
        if sha256_file(checkpoint) != member["checkpoint_sha256"]:
            raise ValueError(f"{checkpoint} is not the checkpoint {path} names for {member['model']} (sha256 "
                             f"{member['checkpoint_sha256'][:12]}); it changed since: run the ensemble stage again")
        models.append(load_checkpoint(checkpoint, device)[0])
    return ensemble_module(models).to(device).eval(), record


def load_model(path: str | Path, device: str = "cpu") -> tuple["torch.nn.Module", CheckpointMeta | EnsembleRecord]:
    """A best.pt (`medpipe.train.load_checkpoint`) or an ensemble.json (`load_ensemble`)."""
    return load_ensemble(path, device) if Path(path).name == ENSEMBLE_RECORD else load_checkpoint(path, device)


def member_metadata(meta: Mapping[str, Any]) -> dict[str, list[dict[str, str]] | str]:
    """For an ensemble's meta: its members (model name, checkpoint sha256) and how they are combined; else {}."""
    if not meta.get("members"):
        return {}
    return {"members": [{"model": m["model"], "checkpoint_sha256": m["checkpoint_sha256"]} for m in meta["members"]],
            "combine": meta.get("combine")}
