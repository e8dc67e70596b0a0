"""What every experiment entry point does first: make the run folder and set torch's threads."""

from __future__ import annotations

from pathlib import Path

import torch

from lsc4rec.settings import RunSettings

__all__ = ["begin_run"]


def begin_run(run: RunSettings, output_dir: Path | None = None) -> Path:
    """The run folder, created: ``output_dir`` or ``output_dir/run_name`` of the settings; torch uses
    ``threads`` intra-op threads when set."""
    out = Path(output_dir) if output_dir is not None else Path(run.output_dir) / run.run_name
    out.mkdir(parents=True, exist_ok=True)
    if run.threads:
        torch.set_num_threads(run.threads)
    return out
