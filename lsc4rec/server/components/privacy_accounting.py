"""Privacy accounting as a loop extension: what the run has spent, from the ε the rounds reported."""

from __future__ import annotations

from typing import Any

from lsc4rec.server.components.loop_hooks import LoopExtension

__all__ = ["PrivacyAccounting"]

#: Train metrics of a round that describe the privacy spent (local DP ledgers or central DP accounting).
PRIVACY_KEYS = ("epsilon", "epsilon-max", "epsilon-mean", "delta", "noise-multiplier", "privacy-stopped")


class PrivacyAccounting(LoopExtension):
    """Summarise the privacy spent by the end of the run (``privacy.mode`` local or central)."""

    name = "privacy"

    def __init__(self, mode: str, clipping_norm: float) -> None:
        """``mode`` and ``clipping_norm`` as configured (``privacy.*``)."""
        self.mode, self.clipping_norm = mode, clipping_norm

    def progress(self, row: dict[str, Any]) -> str:
        """ε spent so far (local DP: the largest device ledger; central DP: the run's)."""
        epsilon = row.get("train", {}).get("epsilon")
        return "" if epsilon is None else f"ε {float(epsilon):.2f}"

    def summary(self, history: list[dict]) -> dict[str, Any]:
        """ε, δ and the noise of the last round that reported them."""
        last = next((row["train"] for row in reversed(history) if "epsilon" in row.get("train", {})), {})
        out: dict[str, Any] = {"mode": self.mode, "clipping_norm": self.clipping_norm}
        out.update({key.replace("-", "_"): last[key] for key in PRIVACY_KEYS if key in last})
        return out
