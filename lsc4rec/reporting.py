"""Run outputs every entry point shares: ``metrics.json``, plots, and the final ``RESULT {json}`` line."""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: devices and CI have no display
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def process_memory_mib(pid: int, field: str = "VmRSS") -> float | None:
    """A memory figure of process ``pid`` in MiB from ``/proc/<pid>/status`` (``VmRSS``: resident now,
    ``VmHWM``: peak resident so far); None where unreadable (not Linux, the process gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return None


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; write them as null rather than emit invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as JSON atomically (temporary file, then rename) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_clean(payload), handle, indent=2, default=_json_default)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def emit_result(summary: Mapping[str, Any]) -> str:
    """Print the one-line ``RESULT {json}`` summary that ends every experiment, and return the line."""
    line = "RESULT " + json.dumps(_clean(summary), default=_json_default, separators=(",", ":"))
    sys.stdout.flush()
    print(line, flush=True)
    return line


def _save_figure(fig: plt.Figure, path: Path, title: str) -> Path:
    """Title, lay out and write ``fig`` as a PNG at ``path``, then free it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curve(
    history: Sequence[Mapping[str, Any]],
    path: Path,
    metric: str = "NDCG@10",
    best_epoch: int | None = None,
    title: str = "",
) -> Path:
    """Plot training loss and validation ``metric`` per epoch (two panels) to a PNG file."""
    epochs = [row["epoch"] for row in history]
    losses = [row["train_loss"] for row in history]
    evaluated = [row for row in history if "valid" in row]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, losses, marker=".", color="tab:blue")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    # Full ranking where the run has it; the sampled protocol otherwise (DIN's default).
    protocol = "full" if all("full" in row["valid"] for row in evaluated) else "sampled"
    ax_metric.plot(
        [row["epoch"] for row in evaluated],
        [row["valid"][protocol][metric] for row in evaluated],
        marker=".",
        color="tab:orange",
    )
    if best_epoch:
        ax_metric.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
        ax_metric.legend()
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(f"validation {metric} ({'full ranking' if protocol == 'full' else 'sampled'})")
    ax_metric.grid(alpha=0.3)
    return _save_figure(fig, path, title)


def plot_rounds(
    history: Sequence[Mapping[str, Any]], path: Path, metric: str = "NDCG@10", title: str = ""
) -> Path:
    """Plot a federated run per round: validation metric, training loss, bytes.

    The server and the nodes rank the same global model on the same validation items, so only the server's
    curve is drawn for the device model alone; with the cloud on, the devices' fused ranking (before and after
    their requests) is drawn beside it, which is what differs. With time moving, the devices' serving of each
    round's arrivals (device alone, the cloud's list, fused) is drawn dashed. Bytes start at zero, without an
    offset.
    """
    rounds = [row["round"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    evaluated = [row for row in history if "server_valid" in row]
    axes[0].plot(
        [r["round"] for r in evaluated],
        [r["server_valid"][metric] for r in evaluated],
        marker=".",
        label="device model alone (server, all users)",
    )
    for key, label in (
        (f"client-collab-before-request-{metric}", "fused with the cloud's stale lists"),
        (f"client-collab-{metric}", "fused, after requests"),
    ):
        rows = [row for row in history if key in row.get("client_evaluate", {})]
        if rows:
            axes[0].plot(
                [r["round"] for r in rows], [r["client_evaluate"][key] for r in rows], marker=".", label=label
            )
    # Time moving: the devices' serving of each round's arrivals (ranked before they arrive).
    for key, label in (
        (f"replay-device-{metric}", "arrivals: device alone"),
        (f"replay-cloud-{metric}", "arrivals: the cloud's list alone"),
        (f"replay-collab-{metric}", "arrivals: fused, after requests"),
    ):
        rows = [row for row in history if key in row.get("client_evaluate", {})]
        if rows:
            axes[0].plot(
                [r["round"] for r in rows],
                [r["client_evaluate"][key] for r in rows],
                marker="x",
                linestyle="--",
                label=label,
            )
    axes[0].set_ylabel(f"{metric} (full ranking)")
    axes[0].legend(fontsize=8)
    axes[1].plot(rounds, [row["train"].get("train_loss", float("nan")) for row in history], marker=".")
    axes[1].set_ylabel("mean local training loss")
    for key, label in (("bytes-sent", "model sent"), ("bytes-received", "updates received")):
        axes[2].plot(rounds, [row["train"].get(key, 0) / 2**20 for row in history], marker=".", label=label)
    if any("codebook" in row for row in history):
        sent = [row.get("codebook", {}).get("codebook-bytes-sent", 0) / 2**20 for row in history]
        axes[2].plot(rounds, sent, marker=".", label="codebook sent")
    axes[2].set_ylabel("MiB per round")
    axes[2].set_ylim(bottom=0)
    axes[2].ticklabel_format(axis="y", style="plain", useOffset=False)
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return _save_figure(fig, path, title)


def run_folder(run_config: Mapping[str, Any], output_dir: str, run_name: str) -> Path:
    """A Flower run's folder, the same on the ServerApp and its nodes: ``<root>/<run_name>``, the root being
    the run config's ``output-dir``, else ``$LSC4REC_OUTPUT_DIR``, else ``output_dir`` (relative to the
    working directory)."""
    configured = str(run_config.get("output-dir", "") or "")
    root = configured or os.environ.get("LSC4REC_OUTPUT_DIR", "") or output_dir
    return Path(root).expanduser().resolve() / run_name
