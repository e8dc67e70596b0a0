"""The run's ``metrics.json`` kept current after every round: a crashed or running job shows its history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsc4rec.reporting import write_json
from lsc4rec.server.components.loop_hooks import LoopExtension, LoopState

__all__ = ["ProgressFile"]


class ProgressFile(LoopExtension):
    """Rewrite ``path`` with ``status: running``, the config and the rounds so far after every round."""

    name = "progress"

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        """``config``: the run's resolved config, as written to the final ``metrics.json``."""
        self.path, self.config = path, config

    def round_end(self, server_round: int, state: LoopState, extensions: Sequence[LoopExtension]) -> None:
        """Write the history so far."""
        write_json(self.path, {"status": "running", "config": self.config, "rounds": state.history})
