"""A node's local-DP privacy ledger on its own disk: every DP-SGD release it made, surviving restarts.

ε is a property of what a device has *released*, so the ledger must outlive the process that trained. In
``context.state`` it did not: a SuperNode restarted after a crash, or a run resumed from a checkpoint (new
processes, fresh contexts), started again from ε = 0 and could spend the whole budget a second time. The
ledger is therefore a JSON file per node (``<privacy.ledger_dir or output_dir/run_name/privacy-ledgers>/
partition-<id>.json``), rewritten atomically after every release, one entry per release:
``{"round", "noise", "rate", "steps"}`` (Opacus' RDP history: a round's DP-SGD steps, or with
``privacy.fresh_prior`` the last round's count vectors and gains, each a Gaussian mechanism at rate 1). A
round trained twice, because the run crashed after the node released its update but before the server
checkpointed that round, is counted twice: both updates left the device. Only round 1 of a run that is not
resumed starts a new ledger.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lsc4rec.client.private_training import HistoryEntry

__all__ = ["LedgerEntry", "PrivacyLedger", "ledger_path"]


def ledger_path(directory: str | Path, partition_id: int) -> Path:
    """Where node ``partition_id`` keeps its ledger under ``directory``."""
    return Path(directory) / f"partition-{partition_id}.json"


@dataclass(frozen=True)
class LedgerEntry:
    """One round's DP-SGD releases: the round, and (noise multiplier, sample rate, steps)."""

    round: int
    noise: float
    rate: float
    steps: int


@dataclass
class PrivacyLedger:
    """The rounds a node has trained under local DP, in the order it trained them."""

    path: Path
    entries: list[LedgerEntry] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, fresh: bool) -> PrivacyLedger:
        """The ledger at ``path``; ``fresh`` (round 1 of a run that is not resumed) starts an empty one.

        Raises ValueError naming the file and the field for a ledger that cannot be read back: silently
        starting over would under-report ε.
        """
        if fresh or not path.exists():
            return cls(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            entries = [
                LedgerEntry(int(e["round"]), float(e["noise"]), float(e["rate"]), int(e["steps"]))
                for e in raw["entries"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"privacy ledger {path} cannot be read ({type(error).__name__}: {error}); it records the "
                "privacy this node has spent, so training stops rather than start again from epsilon 0"
            ) from None
        return cls(path, entries)

    @property
    def history(self) -> list[HistoryEntry]:
        """Opacus' RDP history of every release, for the accountant."""
        return [(e.noise, e.rate, e.steps) for e in self.entries]

    def record(self, server_round: int, released: HistoryEntry) -> None:
        """Add round ``server_round``'s releases ``(noise multiplier, sample rate, steps)`` and save."""
        noise, rate, steps = released
        self.entries.append(LedgerEntry(server_round, float(noise), float(rate), int(steps)))
        self.save()

    def save(self) -> None:
        """Write the ledger atomically (a crash mid-write leaves the previous ledger whole)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"entries": [e.__dict__ for e in self.entries]}
        temporary = self.path.with_suffix(".json.tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
