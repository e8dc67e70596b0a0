"""Micro-batching of concurrent Recommend calls: each reply equals the request alone, concurrent calls share
calls of the source, a bad request fails alone, expired requests are not computed, a full queue is refused
with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from test_candidate_service import TOKEN, PopularitySource, assert_same, expected

from lsc4rec.client.collab.candidate_client import CandidateServiceClient, CandidateServiceError
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.serving import MicroBatcher, QueueFull, serve


class CountingSource(PopularitySource):
    """The test popularity source, counting its calls and the rows they carried."""

    def __init__(self, delay: float = 0.01) -> None:
        super().__init__(delay=delay)
        self.calls: list[int] = []

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        self.calls.append(len(histories))
        return super().recommend(histories, n)


def test_concurrent_calls_share_the_source_and_each_gets_its_own_answer() -> None:
    source = CountingSource(delay=0.02)
    rng = np.random.default_rng(3)
    requests = [
        ([int(i) for i in rng.integers(1, 40, size=rng.integers(1, 10))], int(rng.choice([3, 7])))
        for _ in range(24)
    ]
    with (
        serve(source, token=TOKEN, max_workers=32, batch_delay=0.05) as running,
        CandidateServiceClient(running.target, token=TOKEN, timeout=10.0) as client,
        ThreadPoolExecutor(max_workers=24) as pool,
    ):
        replies = list(pool.map(lambda r: client.recommend_one(r[0], r[1]), requests))
    for (history, n), reply in zip(requests, replies, strict=True):
        assert_same(reply, expected([history], n))
    # 24 concurrent calls, two values of n: far fewer calls of the source than requests.
    assert sum(source.calls) == 24 and len(source.calls) < 12 and max(source.calls) > 1


def test_a_bad_request_fails_alone() -> None:
    source = CountingSource(delay=0.02)
    with (
        serve(source, token=TOKEN, max_workers=16, batch_delay=0.05) as running,
        CandidateServiceClient(running.target, token=TOKEN, timeout=10.0) as client,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        good = [pool.submit(client.recommend_one, [1, 2, i], 5) for i in range(3, 9)]
        bad = pool.submit(client.recommend_one, [1, 999], 5)
        for i, future in zip(range(3, 9), good, strict=True):
            assert_same(future.result(), expected([[1, 2, i]], 5))
        with pytest.raises(CandidateServiceError) as refused:
            bad.result()
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "history[1] = 999" in str(refused.value)


def test_a_full_queue_is_refused_at_once_and_memory_stays_bounded() -> None:
    release, entered = threading.Event(), threading.Event()

    def slow(histories: list[list[int]], n: int) -> CandidateList:
        entered.set()
        release.wait(5.0)
        return expected(histories, n)

    batcher = MicroBatcher(slow, max_batch=1, max_delay=0.0, max_queue=2)
    try:
        first = batcher.submit([[1]], 3)
        # The batching thread has taken the first request and waits in the source.
        assert entered.wait(5.0)
        queued = [batcher.submit([[2]], 3), batcher.submit([[3]], 3)]
        started = time.monotonic()
        with pytest.raises(QueueFull):
            batcher.submit([[4]], 3)
        # Refused at once, not after the source frees up (5 s); the bound leaves room for a busy machine.
        assert time.monotonic() - started < 1.0
        release.set()
        assert_same(first.result(5.0), expected([[1]], 3))
        assert [f.result(5.0).items[0, 0] for f in queued] == [expected([[h]], 3).items[0, 0] for h in (2, 3)]
    finally:
        release.set()
        batcher.close()


def test_requests_past_their_deadline_are_not_computed() -> None:
    release, entered = threading.Event(), threading.Event()
    computed: list[list[list[int]]] = []

    def slow(histories: list[list[int]], n: int) -> CandidateList:
        computed.append(histories)
        entered.set()
        release.wait(5.0)
        return expected(histories, n)

    batcher = MicroBatcher(slow, max_batch=1, max_delay=0.0, max_queue=4)
    try:
        batcher.submit([[1]], 3)
        assert entered.wait(5.0)
        late = batcher.submit([[2]], 3, timeout=0.01)
        time.sleep(0.05)  # at least past the late request's deadline (longer on a busy machine is fine)
        release.set()
        with pytest.raises(TimeoutError):
            late.result(5.0)
        batcher.close()
        assert computed == [[[1]]] and batcher.expired == 1
    finally:
        release.set()


def test_the_service_answers_resource_exhausted_when_its_queue_is_full() -> None:
    source = CountingSource(delay=0.3)
    with (
        serve(source, token=TOKEN, max_workers=16, batch_delay=0.001, max_batch=1, max_queue=1) as running,
        CandidateServiceClient(running.target, token=TOKEN, timeout=10.0) as client,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        futures = [pool.submit(client.recommend_one, [1, i], 3) for i in range(2, 10)]
        codes = []
        for future in futures:
            try:
                future.result()
                codes.append(grpc.StatusCode.OK)
            except CandidateServiceError as error:
                codes.append(error.code)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_batch_calls_share_batches_and_keep_their_rows() -> None:
    source = CountingSource(delay=0.02)
    rng = np.random.default_rng(5)
    requests = [
        [[int(i) for i in rng.integers(1, 40, size=rng.integers(1, 10))] for _ in range(rng.integers(1, 5))]
        for _ in range(12)
    ]
    with (
        serve(source, token=TOKEN, max_workers=16, batch_delay=0.05) as running,
        CandidateServiceClient(running.target, token=TOKEN, timeout=10.0) as client,
        ThreadPoolExecutor(max_workers=12) as pool,
    ):
        replies = list(pool.map(lambda histories: client.recommend(histories, 6), requests))
    for histories, reply in zip(requests, replies, strict=True):
        assert_same(reply, expected(histories, 6))
    assert sum(source.calls) == sum(map(len, requests)) and len(source.calls) < len(requests)


def test_without_a_delay_calls_batch_only_what_queued_while_the_model_was_busy() -> None:
    source = CountingSource(delay=0.05)
    with (
        serve(source, token=TOKEN, max_workers=16, batch_delay=0.0) as running,
        CandidateServiceClient(running.target, token=TOKEN, timeout=10.0) as client,
    ):
        # Alone, a call is answered at once, on its own.
        assert_same(client.recommend_one([1, 2], 4), expected([[1, 2]], 4))
        assert source.calls == [1]
        with ThreadPoolExecutor(max_workers=8) as pool:
            replies = list(pool.map(lambda i: client.recommend_one([i], 4), range(1, 9)))
    for i, reply in zip(range(1, 9), replies, strict=True):
        assert_same(reply, expected([[i]], 4))
    # While the source works on the first of the 8, the others queue and go in together.
    assert len(source.calls) < 1 + 8
