"""Devices when the candidate service is down or restarting: they serve on, count it, and come back."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
import numpy as np
import pytest
import torch
from test_candidate_service import TOKEN, PopularitySource
from test_replay import _OracleCloud, _toy_round, _ttt

from lsc4rec.client.collab.candidate_client import CandidateServiceClient, CandidateServiceError
from lsc4rec.client.collab.fallback import FallbackCloud, empty_lists
from lsc4rec.client.collab.serving import CollaborationSettings, serve_devices
from lsc4rec.client.collab.streaming import serve_arrivals
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.serving import serve
from lsc4rec.simulations.launch.flower import free_port


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FlakySource:
    """Answers like the oracle, or fails with ``code`` while ``down``."""

    def __init__(self, inner: _OracleCloud, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.inner = inner
        self.code = code
        self.down = False
        self.calls = 0

    @property
    def num_items(self) -> int:
        return self.inner.num_items

    @property
    def max_history(self) -> int:
        return 4

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        self.calls += 1
        if self.down:
            raise CandidateServiceError(self.code, "connection refused", "RecommendBatch", "cloud:1")
        assert all(len(h) <= self.max_history for h in histories)  # the fallback cuts uploads
        return self.inner.recommend(histories, n)


def test_a_failed_call_answers_none_pauses_then_retries_and_recovers() -> None:
    histories, arrivals = _toy_round()
    source = _FlakySource(_OracleCloud([h + a for h, a in zip(histories, arrivals, strict=True)], 30, n=5))
    clock = _Clock()
    cloud = FallbackCloud(source, pause=1.0, max_pause=3.0, clock=clock)
    assert cloud.recommend(histories[:2], 5) is not None and cloud.calls.answered == 1
    source.down = True
    assert cloud.recommend(histories[:2], 5) is None
    assert cloud.calls.failed == {"UNAVAILABLE": 1} and not cloud.available
    # Within the pause nothing is sent; each failure in a row doubles the pause, up to max_pause.
    assert cloud.recommend(histories[:2], 5) is None and cloud.calls.skipped == 1 and source.calls == 2
    pauses = []
    for _ in range(3):
        start = clock.now
        while not cloud.available:
            clock.now += 0.25
        pauses.append(clock.now - start)
        assert cloud.recommend(histories[:2], 5) is None
    assert pauses == [1.0, 2.0, 3.0]
    clock.now += 3.0
    source.down = False
    assert cloud.recommend(histories[:2], 5) is not None
    assert cloud.calls.answered == 2 and cloud.calls.unanswered == 5
    # Recovered: the next failure pauses for the first interval again.
    source.down = True
    cloud.recommend(histories[:2], 5)
    clock.now += 1.0
    assert cloud.available


def test_errors_retrying_cannot_fix_are_raised() -> None:
    histories, _ = _toy_round()
    source = _FlakySource(_OracleCloud(histories, 30, n=5), grpc.StatusCode.UNAUTHENTICATED)
    source.down = True
    with pytest.raises(CandidateServiceError, match="UNAUTHENTICATED"):
        FallbackCloud(source).recommend(histories[:1], 5)


def test_a_restarted_service_is_used_again_by_the_same_client() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    running = serve(PopularitySource(delay=0.0), address=address, token=TOKEN)
    with CandidateServiceClient(address, token=TOKEN, timeout=2.0) as client:
        cloud = FallbackCloud(client, pause=0.05, max_pause=0.2)
        assert cloud.recommend([[1, 2]], 5) is not None
        running.stop(grace=0)
        assert cloud.recommend([[1, 2]], 5) is None
        assert set(cloud.calls.failed) <= {"UNAVAILABLE", "CANCELLED", "UNKNOWN"}
        running = serve(PopularitySource(delay=0.0), address=address, token=TOKEN)
        try:
            # The channel reconnects on its own; the fallback tries again after its pause.
            answered, deadline = None, time.monotonic() + 10.0
            while answered is None and time.monotonic() < deadline:
                answered = cloud.recommend([[1, 2]], 5)
                time.sleep(0.05)
            assert answered is not None and answered.items.shape == (1, 5)
        finally:
            running.stop(grace=0)


def _serve(cloud: object, stale: CandidateList, pool: str, mode: str = "always") -> dict[str, float]:
    histories, arrivals = _toy_round()
    settings = CollaborationSettings(
        candidates=10, alpha=0.5, mode=mode, ratio=1.0, device_candidates=10, candidate_pool=pool
    )
    return serve_arrivals(
        _ttt(30),
        histories,
        arrivals,
        20,
        (1, 10),
        cloud=cloud,  # type: ignore[arg-type]
        stale=stale,
        settings=settings,
        generator=torch.Generator().manual_seed(0),
    )


@pytest.mark.parametrize("pool", ["union", "llm"])
def test_devices_without_the_cloud_rank_every_arrival_with_their_own_model(pool: str) -> None:
    histories, arrivals = _toy_round()
    source = _FlakySource(_OracleCloud([h + a for h, a in zip(histories, arrivals, strict=True)], 30, n=10))
    source.down = True
    result = _serve(FallbackCloud(source, pause=60.0, max_pause=60.0), empty_lists(len(histories), 10), pool)
    arrived = sum(map(len, arrivals))
    assert result["replay-arrivals"] == arrived  # nothing dropped
    assert result["replay-requests"] == arrived and result["replay-request-failures"] == arrived
    assert result["replay-request-bytes"] == 0
    # No cloud list at all: the device's fused ranking is its own ranking of the catalogue.
    for metric in ("HR@1", "HR@10", "NDCG@10"):
        assert result[f"replay-collab-{metric}"] == pytest.approx(result[f"replay-device-{metric}"], abs=1e-9)
    assert source.calls == 1  # one failure, then the pause: no call per arrival while the cloud is down


def test_devices_keep_their_stale_lists_while_the_cloud_is_down_and_use_fresh_ones_after() -> None:
    histories, arrivals = _toy_round()
    full = [h + a for h, a in zip(histories, arrivals, strict=True)]
    source = _FlakySource(_OracleCloud(full, 30, n=10))
    stale = _OracleCloud(full, 30, n=10).recommend([h[:-2] for h in histories], 10)
    up = _serve(FallbackCloud(source), stale, "union")
    source.down = True
    down = _serve(FallbackCloud(source, pause=60.0, max_pause=60.0), stale, "union")
    never = _serve(FallbackCloud(source), stale, "union", mode="never")
    assert down["replay-request-failures"] == down["replay-requests"] > 0
    assert up["replay-request-failures"] == 0
    # Down, the devices rank exactly as if they had not asked; up, the fresh lists help.
    assert down["replay-collab-NDCG@10"] == pytest.approx(never["replay-collab-NDCG@10"], abs=1e-9)
    assert up["replay-collab-NDCG@10"] > down["replay-collab-NDCG@10"]


def test_serving_a_snapshot_counts_requests_the_cloud_left_unanswered() -> None:
    histories, arrivals = _toy_round()
    targets = [a[0] if a else h[-1] for h, a in zip(histories, arrivals, strict=True)]
    source = _FlakySource(_OracleCloud(histories, 30, n=10))
    source.down = True
    settings = CollaborationSettings(candidates=10, mode="always", ratio=1.0, device_candidates=10)
    result = serve_devices(
        _ttt(30),
        histories,
        targets,
        empty_lists(len(histories), 10),
        source,  # a bare source: serve_devices rides out its failures itself
        settings,
        20,
        torch.Generator().manual_seed(0),
        (10,),
    )
    assert result["requests"] == result["request-failures"] == len(histories)
    assert np.isfinite(result["collab-NDCG@10"]) and result["request-bytes"] == 0
