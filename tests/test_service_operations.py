"""Running the candidate service: the standard health check, per-method counters and latency histograms, no
thread held per waiting call, cancelled calls never computed."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_candidate_service import TOKEN, PopularitySource, expected

from lsc4rec.client.collab.candidate_client import CandidateServiceClient, CandidateServiceError
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.proto import candidate_service_pb2 as pb
from lsc4rec.proto import candidate_service_pb2_grpc as pb_grpc
from lsc4rec.proto.service_metrics import LATENCY_BOUNDS, MethodStats, MetricsSnapshot, ServiceMetrics
from lsc4rec.serving import SERVICE_NAME, serve


class RecordingSource(PopularitySource):
    """The popularity source, recording every history it was asked about."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay=delay)
        self.seen: list[list[int]] = []
        self.calls: list[int] = []
        self.started = threading.Event()

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        self.seen.extend(list(h) for h in histories)
        self.calls.append(len(histories))
        self.started.set()
        return super().recommend(histories, n)


def service_threads() -> int:
    return sum(thread.name.startswith("candidate") for thread in threading.enumerate())


# ---------------------------------------------------------------------- health
def test_standard_health_check_needs_no_token_and_names_the_service() -> None:
    with serve(PopularitySource(), token=TOKEN) as running, grpc.insecure_channel(running.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        # The rest of the service still needs the token.
        with CandidateServiceClient(running.target) as anonymous:
            assert anonymous.health() == "SERVING"
            with pytest.raises(CandidateServiceError) as refused:
                anonymous.metrics()
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------------- metrics
def test_every_call_is_counted_by_method_and_status_with_its_latency() -> None:
    with (
        serve(PopularitySource(delay=0.03), token=TOKEN) as running,
        CandidateServiceClient(running.target, token=TOKEN, timeout=5.0) as client,
    ):
        for history in ([1, 2], [3], [4, 5, 6]):
            client.recommend_one(history, 3)
        client.recommend([[1], [2]], 3)
        for bad in (lambda: client.recommend_one([0], 3), lambda: client.recommend_one([1], 0)):
            with pytest.raises(CandidateServiceError):
                bad()
        with (
            CandidateServiceClient(running.target, token="wrong") as impostor,
            pytest.raises(CandidateServiceError),
        ):
            impostor.recommend_one([1], 3)
        local = running.metrics()
        remote = client.metrics()

    for snapshot in (local, remote):
        assert snapshot.stats("Recommend").codes == {"OK": 3, "INVALID_ARGUMENT": 2, "UNAUTHENTICATED": 1}
        assert snapshot.stats("RecommendBatch").codes == {"OK": 1}
        assert snapshot.calls("Info") >= 1
        assert snapshot.errors() == 3
        # Three answered calls took the source's 30 ms each; refusals are fast.
        p99 = snapshot.quantile("RecommendBatch", 0.99)
        assert p99 is not None and 0.02 <= p99 <= 0.2
        assert snapshot.stats("Recommend").seconds >= 3 * 0.03
    # What the Metrics rpc sends is what the server holds (up to calls made in between: Metrics itself).
    assert remote.stats("Recommend") == local.stats("Recommend")


def test_histogram_quantiles_and_differences() -> None:
    metrics = ServiceMetrics()
    for seconds in [0.0005] * 50 + [0.015] * 49 + [30.0]:
        metrics.record("Recommend", "OK", seconds)
    first = metrics.snapshot()
    stats = first.stats("Recommend")
    assert stats.calls == 100 and stats.buckets[0] == 50 and stats.buckets[-1] == 1
    # Linear within the bucket holding the rank (0..1 ms for the median); the slowest bucket reports the
    # largest bound, as Prometheus's histogram_quantile does.
    assert stats.quantile(0.5) == pytest.approx(0.001)
    assert 0.01 < stats.quantile(0.9) <= 0.02
    assert stats.quantile(1.0) == LATENCY_BOUNDS[-1]
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        stats.quantile(1.5)
    assert MethodStats().quantile(0.5) is None

    metrics.record("Recommend", "DEADLINE_EXCEEDED", 0.3)
    metrics.record("Info", "OK", 0.0001)
    later = metrics.snapshot()
    between = later.since(first)
    assert between.stats("Recommend").codes == {"DEADLINE_EXCEEDED": 1}
    assert between.calls() == 2 and between.errors() == 1
    # One call in the 200..500 ms bucket: its median is estimated halfway through the bucket.
    assert between.summary()["Recommend"]["p50_ms"] == pytest.approx(350.0)
    assert isinstance(later, MetricsSnapshot) and later.uptime_seconds >= first.uptime_seconds


# ---------------------------------------------------------------------- asynchronous serving
def test_waiting_calls_hold_no_thread_and_all_get_their_answers() -> None:
    source = RecordingSource(delay=0.05)
    histories = [[1 + i % 40, 1 + (i * 7) % 40] for i in range(64)]
    with (
        serve(source, token=TOKEN, max_workers=2, batch_delay=0.0) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        stub = pb_grpc.CandidateServiceStub(channel)
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        before = service_threads()
        calls = [
            stub.Recommend.future(pb.RecommendRequest(history=h, n=4), timeout=10, metadata=metadata)
            for h in histories
        ]
        source.started.wait(5.0)
        # 64 calls in flight: the event loop, the micro-batcher and at most max_workers model threads.
        during = service_threads()
        replies = [call.result() for call in calls]
    assert during <= before + 2
    # Every waiting call was admitted at once (a thread-per-call server with 2 threads would have let in two
    # at a time, 32+ calls of the source), so they shared a few calls of the source.
    assert sum(source.calls) == 64 and len(source.calls) <= 4
    for history, reply in zip(histories, replies, strict=True):
        assert list(reply.items) == expected([history], 4).items[0].tolist()


def test_a_cancelled_call_is_never_computed_and_does_not_stall_the_others() -> None:
    source = RecordingSource(delay=0.3)
    with (
        serve(source, token=TOKEN, batch_delay=0.0) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        stub = pb_grpc.CandidateServiceStub(channel)
        metadata = (("authorization", f"Bearer {TOKEN}"),)

        def ask(history: list[int]) -> grpc.Future:
            return stub.Recommend.future(
                pb.RecommendRequest(history=history, n=3), timeout=10, metadata=metadata
            )

        busy = ask([1])  # occupies the model for 0.3 s
        assert source.started.wait(5.0)
        kept, cancelled = ask([2, 3]), ask([4, 5])
        time.sleep(0.05)  # both reached the server's queue
        assert cancelled.cancel()
        started = time.monotonic()
        assert list(kept.result().items) == expected([[2, 3]], 3).items[0].tolist()
        assert list(busy.result().items) == expected([[1]], 3).items[0].tolist()
        assert time.monotonic() - started < 2.0
        deadline = time.monotonic() + 5.0
        while running.metrics().calls("Recommend") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        metrics = running.metrics()
    assert [4, 5] not in source.seen
    assert metrics.stats("Recommend").codes == {"OK": 2, "CANCELLED": 1}
