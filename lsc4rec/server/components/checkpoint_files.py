"""Atomic, verified checkpoints of a federated run: a crash never leaves a half-written or half-loaded model.

A checkpoint is one file holding a SHA-256 digest and the pickled payload it covers (global weights, best
weights, strategy state, RNG states, round number, metrics so far). Saving writes a temporary file in the same
folder, fsyncs it and renames it over the old one (atomic on POSIX). Loading checks the digest and that every
tensor matches the model's keys and shapes before anything is applied.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 2  # 2: extensions keep their state under "extensions" and "best_snapshots"
_MAGIC = b"LSC4REC-CKPT\n"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: missing, truncated, corrupt, or for a different model."""


def rng_states() -> dict[str, Any]:
    """The process's Python, numpy and torch RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng_states(states: dict[str, Any]) -> None:
    """Restore :func:`rng_states` output."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically with an integrity digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **payload}, buffer)
    body = buffer.getvalue()
    data = _MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        # Disk full, quota, file-size limit, read-only folder: the rename never happened, so the previous
        # checkpoint (if any) is untouched; say which file and why instead of a bare errno.
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = error.strerror or str(error)
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({reason}, {len(data)} bytes); "
            "the previous checkpoint is unchanged"
        ) from error
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path, reference: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint; with ``reference`` (a state dict) also check the weights' keys/shapes.

    Raises :class:`CheckpointError` naming the file and the problem; nothing is returned half-loaded.
    """
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint to resume from (run without federated.resume=true first)"
        )
    raw = path.read_bytes()
    if not raw.startswith(_MAGIC):
        raise CheckpointError(f"{path}: not an lsc4rec checkpoint (bad header)")
    header_end = raw.find(b"\n", len(_MAGIC))
    if header_end < 0:
        raise CheckpointError(f"{path}: truncated checkpoint (no digest line)")
    expected = raw[len(_MAGIC) : header_end].decode(errors="replace")
    body = raw[header_end + 1 :]
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint (SHA-256 {actual[:12]}... != recorded "
            f"{expected[:12]}...; {len(body)} payload bytes)"
        )
    try:
        # Our own file, verified by its digest above; RNG states need full unpickling.
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint payload ({exc})") from exc
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {payload.get('format_version')} != {FORMAT_VERSION}")
    if reference is not None:
        for name in ("arrays", "best_arrays"):
            check_weights(path, name, payload[name], reference)
    return payload


def check_weights(
    path: Path,
    name: str,
    weights: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    error: type[Exception] = CheckpointError,
) -> None:
    """Raise ``error`` (:class:`CheckpointError`) unless ``weights`` has exactly the reference's keys and
    shapes; the message names ``path``, ``name`` and the first mismatch."""
    missing = sorted(set(reference) - set(weights))
    extra = sorted(set(weights) - set(reference))
    if missing or extra:
        raise error(f"{path}: {name} do not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, tensor in reference.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise error(
                f"{path}: {name}[{key!r}] has shape {tuple(weights[key].shape)}, "
                f"the model needs {tuple(tensor.shape)}"
            )
