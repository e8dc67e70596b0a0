"""The cloud LLM as a loop extension: evaluating nodes learn where its candidate service is."""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord

from lsc4rec.messages import CandidateService
from lsc4rec.server.cloud import Cloud
from lsc4rec.server.extensions.base import LoopExtension

__all__ = ["CloudCandidates"]


class CloudCandidates(LoopExtension):
    """Announce ``cloud``'s candidate service to every evaluating node; report its use; stop it at the end."""

    name = "collaboration"

    def __init__(self, cloud: Cloud) -> None:
        """Own the running ``cloud`` (its service stops in :meth:`close`)."""
        self.cloud = cloud

    def outgoing(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """Time moves: the cloud's copy of the histories is that of the round's start."""
        self.cloud.move_to_round(server_round)
        return arrays

    def test_config(self) -> dict[str, Any]:
        """The final test phase: the service answers from the stale copies of the test moment."""
        self.cloud.move_to_test()
        return self.evaluate_config()

    def evaluate_config(self) -> dict[str, Any]:
        """The service's address, token and whether it speaks TLS."""
        service = CandidateService(
            self.cloud.public_address or self.cloud.service.target,
            self.cloud.token,
            bool(self.cloud.service.tls),
        )
        return service.to_config()

    def summary(self, history: list[dict]) -> dict[str, Any]:
        """The cloud's report and the devices' collaboration metrics of the last round."""
        last = history[-1].get("client_evaluate", {}) if history else {}
        return {
            "cloud": self.cloud.report,
            "last_round": {
                k: v for k, v in last.items() if k.startswith(("client-collab", "request", "replay-"))
            },
        }

    def close(self) -> None:
        """Stop the candidate service."""
        self.cloud.stop()
