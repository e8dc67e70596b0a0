"""What every experiment entry point does first: resolve the config, make the run folder, set threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lsc4rec.config import to_plain_dict

__all__ = ["begin_run"]


def begin_run(cfg: DictConfig, output_dir: Path | None = None) -> tuple[dict[str, Any], Path]:
    """``(resolved config as a dict, run folder)``; the folder is ``output_dir`` or
    ``cfg.output_dir/run_name``, created; torch uses ``cfg.threads`` intra-op threads when set.
    """
    plain = to_plain_dict(cfg)
    out = Path(output_dir) if output_dir is not None else Path(cfg.output_dir) / str(plain["run_name"])
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    return plain, out
