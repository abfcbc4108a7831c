"""Which torch device a config's device setting means; shared by training, evaluation and prediction."""

from __future__ import annotations

__all__ = ["resolve_device", "is_cuda"]


def resolve_device(device: str) -> str:
    """Map a config device ("auto", "cpu", "cuda", "cuda:N") to a torch device string.

    Args:
        device: the setting, e.g. ``cfg.train.device``.

    Returns:
        "cuda" / "cuda:N" / "cpu"; "auto" picks "cuda" when torch sees a GPU, else "cpu".

    Raises:
        ValueError: an unknown name, or CUDA asked for on a machine without a usable GPU.
    """
    import torch  # inside: DAG files import modules that import this one at parse time

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but torch sees no CUDA GPU; "
                             "use 'cpu' or 'auto' (e.g. train.device=auto)")
        return device
    raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def is_cuda(device: str) -> bool:
    """True for "cuda" and "cuda:N": the device strings that get bf16 autocast and channels_last."""
    return device == "cuda" or device.startswith("cuda:")
