"""The cloud LLM as a loop extension: evaluating nodes learn where its candidate service is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.app import ArrayRecord, Message

from lsc4rec.messages import CONFIG, FUSION_ALPHA, CandidateService
from lsc4rec.server.components.cloud_llm import Cloud
from lsc4rec.server.components.fusion_weight import FusionWeight
from lsc4rec.server.components.loop_hooks import LoopExtension, LoopState

__all__ = ["CloudCandidates"]


class CloudCandidates(LoopExtension):
    """Announce ``cloud``'s candidate service to every evaluating node; report its use; stop it at the end."""

    name = "collaboration"

    def __init__(
        self, cloud: Cloud, train_on_lists: bool = False, fusion: FusionWeight | None = None
    ) -> None:
        """Own the running ``cloud`` (its service stops in :meth:`close`); ``train_on_lists``: the nodes train
        on the cloud's lists (``collab.srm_training=collaborative``); ``fusion``: the weight devices fuse with
        (default: the devices' own ``collab.alpha``)."""
        self.cloud = cloud
        self.train_on_lists = train_on_lists
        self.fusion = fusion
        self.row: dict[str, Any] = {}
        # The service's counters when the current round started: each round logs what happened since.
        self._seen = cloud.service.metrics()

    def start(self, state: LoopState) -> None:
        """Resume: the fusion weight's evidence so far."""
        if state.restored is not None and self.fusion is not None:
            saved = state.restored["extensions"].get(self.name)
            if saved is not None:
                self.fusion.load_state_dict(saved)

    def outgoing(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """Time moves: the cloud's copy of the histories is that of the round's start."""
        self.cloud.move_to_round(server_round)
        return arrays

    def attach(self, messages: Sequence[Message], phase: str) -> None:
        """Collaborative training: training nodes learn where the service is too (they fetch its lists)."""
        if phase == "train" and self.train_on_lists:
            for message in messages:
                message.content[CONFIG].update(self.evaluate_config())

    def test_config(self) -> dict[str, Any]:
        """The final test phase: the service answers from the stale copies of the test moment."""
        self.cloud.move_to_test()
        return self.evaluate_config()

    def evaluate_config(self) -> dict[str, Any]:
        """The service's address, token and whether it speaks TLS; the fusion weight."""
        service = CandidateService(
            self.cloud.public_address or self.cloud.service.target,
            self.cloud.token,
            bool(self.cloud.service.tls),
        )
        config = service.to_config()
        if self.fusion is not None:
            config[FUSION_ALPHA] = self.fusion.current
            self.row = {"fusion-alpha": self.fusion.current}
        return config

    def round_row(self) -> dict[str, Any] | None:
        """The fusion weight the round's devices used and the candidate service's calls during the round
        (per method: calls, status codes, mean / p50 / p99 latency; micro-batch sizes)."""
        now = self.cloud.service.metrics()
        during, self._seen = now.since(self._seen), now
        return {**self.row, "service": during.summary()}

    def round_end(self, server_round: int, state: LoopState, extensions: Sequence[LoopExtension]) -> None:
        """``collab.alpha=auto``: the round's serving at every weight joins the evidence."""
        if self.fusion is not None and state.history:
            self.fusion.observe(state.history[-1].get("client_evaluate", {}))

    def state_dict(self) -> Any:
        """The fusion weight's evidence (None for a fixed weight)."""
        return self.fusion.state_dict() if self.fusion is not None and self.fusion.auto else None

    def progress(self, row: dict[str, Any]) -> str:
        """Device alone vs fused on the round's arrivals (or validation), the request rate and its bytes, and
        the candidate service's calls, errors and slowest method's p99 latency."""
        client = row.get("client_evaluate", {})
        service = _service_note(row.get(self.name, {}).get("service", {}))
        if "request-rate" not in client:
            return service
        if client.get("replay-arrivals-per-device", None) == 0.0:
            # A round with nothing arriving (the closing round of federated.replay_closing_round).
            return "no arrivals this round" + (f"; {service}" if service else "")
        moving = "replay-collab-NDCG@10" in client
        device = client.get("replay-device-NDCG@10" if moving else "client-NDCG@10", float("nan"))
        fused = client.get("replay-collab-NDCG@10" if moving else "client-collab-NDCG@10", float("nan"))
        where = "arrivals" if moving else "valid"
        return (
            f"{where} NDCG@10 device {device:.4f} / fused {fused:.4f}, "
            f"requests {client['request-rate']:.0%}, "
            f"{client.get('request-bytes-per-device', 0.0):.0f} B/device"
            + (f"; {service}" if service else "")
        )

    def summary(self, history: list[dict]) -> dict[str, Any]:
        """The cloud's report, the candidate service's calls over the whole run and the devices'
        collaboration metrics of the last round."""
        last = history[-1].get("client_evaluate", {}) if history else {}
        fusion = {}
        if self.fusion is not None:
            fusion = {"alpha": self.fusion.current, "alpha_on_arrivals": self.fusion.table()}
        return {
            **fusion,
            "cloud": self.cloud.report,
            "service_calls": self.cloud.service.metrics().summary(),
            "last_round": {
                k: v for k, v in last.items() if k.startswith(("client-collab", "request", "replay-"))
            },
        }

    def close(self) -> None:
        """Stop the candidate service."""
        self.cloud.stop()


def _service_note(service: dict[str, Any]) -> str:
    """``service 412 calls (0 errors), p99 38 ms (RecommendForUsers)`` from a round's service summary."""
    methods = {name: stats for name, stats in service.items() if name != "batching" and stats["calls"]}
    if not methods:
        return ""
    calls = sum(stats["calls"] for stats in methods.values())
    errors = sum(stats["errors"] for stats in methods.values())
    slowest = max(methods, key=lambda name: methods[name]["p99_ms"] or 0.0)
    return f"service {calls} calls ({errors} errors), p99 {methods[slowest]['p99_ms']:.0f} ms ({slowest})"
