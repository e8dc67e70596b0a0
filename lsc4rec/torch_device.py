"""Where models run: parse a device name from the config and find the device a model lives on."""

from __future__ import annotations

import torch

__all__ = ["model_device", "resolve_device"]


def resolve_device(name: str, field_name: str = "device") -> torch.device:
    """Parse ``auto|cpu|cuda|cuda:N|mps`` into a device that exists here, or raise naming ``field_name``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"{field_name}={name!r} is not a device (use auto, cpu, cuda, cuda:N or mps)"
        ) from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{field_name}={name!r} but this machine has no CUDA device; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{field_name}={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{field_name}={name!r} but MPS is not available here; use auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{field_name}={name!r}: unsupported device type {device.type!r}")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device holding the model's parameters (CPU for a parameterless module)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")
