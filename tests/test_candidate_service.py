"""The gRPC candidate service end to end on loopback: results, validation, auth, deadlines, threads, TLS."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import self_signed_certificate

from lsc4rec.client.collab.candidate_client import CandidateServiceClient, CandidateServiceError
from lsc4rec.models.llm.candidates import CandidateList, CandidateSource
from lsc4rec.proto import candidate_service_pb2 as pb
from lsc4rec.proto import candidate_service_pb2_grpc as pb_grpc
from lsc4rec.serving import RunningService, TLSConfig, serve

NUM_ITEMS = 50
MAX_HISTORY = 10
TOKEN = "test-token-4f9a"


class PopularitySource:
    """Ranks items by a fixed, all-distinct popularity vector, skipping the history; scores are log-probs.

    ``recommend`` is deliberately not thread-safe: it parks the batch on the instance and sleeps before
    reading it back, so two unsynchronised calls would answer with each other's histories.
    """

    def __init__(self, delay: float = 0.0005, fail: bool = False) -> None:
        counts = (np.random.default_rng(7).permutation(NUM_ITEMS) + 1).astype(np.float64) * 3.0
        self._log_probs = np.log(counts / counts.sum())
        self._order = np.argsort(-counts, kind="stable") + 1  # item ids, most popular first
        self._pending: list[list[int]] = []
        self.delay = delay
        self.fail = fail
        self.model_version = "popularity-test"

    @property
    def num_items(self) -> int:
        """Catalogue size."""
        return NUM_ITEMS

    @property
    def max_history(self) -> int:
        """Longest accepted history."""
        return MAX_HISTORY

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        """The ``n`` most popular items outside each history (empty slots once the catalogue runs out)."""
        if self.fail:
            raise ValueError("boom")
        self._pending = [list(h) for h in histories]
        time.sleep(self.delay)
        pending = self._pending
        items = np.zeros((len(pending), n), dtype=np.int64)
        scores = np.full((len(pending), n), -np.inf)
        for row, history in enumerate(pending):
            seen = set(history)
            ranked = np.array([i for i in self._order if i not in seen][:n], dtype=np.int64)
            items[row, : len(ranked)] = ranked
            scores[row, : len(ranked)] = self._log_probs[ranked - 1]
        return CandidateList(items, scores)


REFERENCE = PopularitySource(delay=0.0)


def expected(histories: Sequence[Sequence[int]], n: int) -> CandidateList:
    """What the source answers directly (scores as float32, the wire's precision)."""
    result = REFERENCE.recommend(histories, n)
    return CandidateList(result.items, result.scores.astype(np.float32))


def assert_same(actual: CandidateList, wanted: CandidateList) -> None:
    """Same items and same scores (exactly: float32 survives the wire unchanged, -inf included)."""
    np.testing.assert_array_equal(actual.items, wanted.items)
    np.testing.assert_array_equal(actual.scores, wanted.scores)
    assert actual.items.dtype == np.int64
    assert actual.scores.dtype == np.float32


@pytest.fixture(scope="module")
def service() -> Iterator[RunningService]:
    with serve(PopularitySource(), token=TOKEN, max_workers=16) as running:
        yield running


@pytest.fixture(scope="module")
def client(service: RunningService) -> Iterator[CandidateServiceClient]:
    with CandidateServiceClient(service.target, token=TOKEN, timeout=5.0) as c:
        yield c


# ---------------------------------------------------------------------- results
def test_info_and_protocol(service: RunningService, client: CandidateServiceClient) -> None:
    assert service.port > 0 and service.target == f"127.0.0.1:{service.port}"
    assert client.num_items == NUM_ITEMS
    assert client.max_history == MAX_HISTORY
    assert client.max_n == 100
    assert client.model_version == "popularity-test"
    assert client.info().max_batch == 1024
    assert isinstance(client, CandidateSource)


def test_batch_results_equal_the_source(client: CandidateServiceClient) -> None:
    histories = [[1], [5, 9, 9, 2], list(range(1, 11)), [50, 49, 48]]
    for n in (1, 10):
        assert_same(client.recommend(histories, n), expected(histories, n))
    # 10 history items leave 40 candidates for n = 45: the last 5 slots are empty (0, -inf) on the wire too.
    result = client.recommend(histories, 45)
    assert_same(result, expected(histories, 45))
    assert (result.items[2, 40:] == 0).all() and np.isneginf(result.scores[2, 40:]).all()
    # numpy arrays are accepted as histories; an empty batch needs no call.
    assert_same(client.recommend([np.array([3, 4])], 5), expected([[3, 4]], 5))
    assert client.recommend([], 5).items.shape == (0, 5)


def test_single_results_equal_the_source(client: CandidateServiceClient) -> None:
    for history in ([7], [1, 2, 3], list(range(41, 51))):
        assert_same(client.recommend_one(history, 12, request_id="r1"), expected([history], 12))


def test_client_splits_batches_at_the_server_limit() -> None:
    histories = [[i] for i in range(1, 11)]
    with (
        serve(PopularitySource(), max_batch=3) as running,
        CandidateServiceClient(running.target) as small,
    ):
        assert small.info().max_batch == 3
        assert_same(small.recommend(histories, 4), expected(histories, 4))


# ---------------------------------------------------------------------- validation
BAD_HISTORIES = [
    pytest.param([3, 0, 5], ["[1] = 0", "valid ids are 1..50"], id="zero-id"),
    pytest.param([51], ["[0] = 51", "valid ids are 1..50"], id="id-above-catalogue"),
    pytest.param([4, -2, -3], ["[1] = -2", "2 unknown ids"], id="negative-ids"),
    pytest.param([], ["is empty"], id="empty"),
    pytest.param(list(range(1, 12)), ["has 11 items", "max_history = 10"], id="too-long"),
]


@pytest.mark.parametrize("history, fragments", BAD_HISTORIES)
def test_bad_history_is_invalid_argument(
    client: CandidateServiceClient, history: list[int], fragments: list[str]
) -> None:
    with pytest.raises(CandidateServiceError) as single:
        client.recommend_one(history, 5)
    assert single.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert single.value.details.startswith("history")
    for fragment in fragments:
        assert fragment in single.value.details
    # In a batch the message names the offending history.
    with pytest.raises(CandidateServiceError) as batch:
        client.recommend([[1, 2], history], 5)
    assert batch.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert batch.value.details.startswith("histories[1].items")
    for fragment in fragments:
        assert fragment in batch.value.details


@pytest.mark.parametrize("n", [0, -1, 101])
def test_bad_n_is_invalid_argument(client: CandidateServiceClient, n: int) -> None:
    for call in (lambda: client.recommend_one([1], n), lambda: client.recommend([[1]], n)):
        with pytest.raises(CandidateServiceError) as error:
            call()
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"n = {n} is outside 1..100" in error.value.details
        assert "INVALID_ARGUMENT" in str(error.value)


def test_overlong_request_id_is_invalid_argument(client: CandidateServiceClient) -> None:
    for call in (
        lambda: client.recommend_one([1], 3, request_id="x" * 129),
        lambda: client.recommend([[1]], 3, request_id="x" * 129),
    ):
        with pytest.raises(CandidateServiceError) as error:
            call()
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "request_id has 129 characters, more than 128" in error.value.details
    assert_same(client.recommend([[1]], 3, request_id="x" * 128), expected([[1]], 3))


def test_bad_batch_shapes_are_invalid_argument(caplog: pytest.LogCaptureFixture) -> None:
    # The client never sends these (it skips empty batches and splits large ones): use the raw stub.
    with (
        serve(PopularitySource(), max_batch=2) as running,
        grpc.insecure_channel(running.target) as channel,
        caplog.at_level(logging.WARNING, logger="lsc4rec.serving"),
    ):
        stub = pb_grpc.CandidateServiceStub(channel)
        with pytest.raises(grpc.RpcError) as empty:
            stub.RecommendBatch(pb.RecommendBatchRequest(n=3, request_id="empty-batch"), timeout=5)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "histories is empty" in empty.value.details()
        histories = [pb.History(items=[1]) for _ in range(3)]
        with pytest.raises(grpc.RpcError) as large:
            stub.RecommendBatch(pb.RecommendBatchRequest(histories=histories, n=3), timeout=5)
        assert large.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "histories has 3 entries, more than max_batch = 2" in large.value.details()
    # Each refusal is logged with its reason and the request id.
    assert "refused RecommendBatch" in caplog.text and "'empty-batch'" in caplog.text
    assert "more than max_batch = 2" in caplog.text


def test_source_failure_is_internal() -> None:
    with (
        serve(PopularitySource(fail=True)) as running,
        CandidateServiceClient(running.target) as failing,
        pytest.raises(CandidateServiceError) as error,
    ):
        failing.recommend([[1]], 3)
    assert error.value.code == grpc.StatusCode.INTERNAL
    assert "candidate source failed: ValueError: boom" in error.value.details


# ---------------------------------------------------------------------- auth
def test_token_auth(service: RunningService, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lsc4rec.serving"):
        with (
            CandidateServiceClient(service.target) as anonymous,
            pytest.raises(CandidateServiceError) as missing,
        ):
            anonymous.recommend([[1]], 3)
        assert missing.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "missing 'authorization: Bearer <token>' metadata" in missing.value.details

        with CandidateServiceClient(service.target, token="wrong") as impostor:
            for call in (impostor.info, lambda: impostor.recommend_one([1], 3)):
                with pytest.raises(CandidateServiceError) as wrong:
                    call()
                assert wrong.value.code == grpc.StatusCode.UNAUTHENTICATED
                assert "invalid token" in wrong.value.details

        with CandidateServiceClient(service.target, token=TOKEN) as member:
            assert_same(member.recommend([[2, 3]], 4), expected([[2, 3]], 4))
    assert caplog.text.count("UNAUTHENTICATED") == 3
    assert TOKEN not in caplog.text and "wrong" not in caplog.text


# ---------------------------------------------------------------------- deadlines
def test_slow_source_hits_the_client_deadline() -> None:
    with (
        serve(PopularitySource(delay=1.0)) as running,
        CandidateServiceClient(running.target, timeout=0.2) as impatient,
    ):
        assert impatient.num_items == NUM_ITEMS  # Info does not touch the model: well within the deadline
        started = time.monotonic()
        with pytest.raises(CandidateServiceError) as error:
            impatient.recommend([[1]], 3)
        assert time.monotonic() - started < 0.9
        running.stop(grace=0)
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timeout" in str(error.value)


# ---------------------------------------------------------------------- concurrency
def test_concurrent_clients_get_their_own_answers(client: CandidateServiceClient) -> None:
    threads = 32
    rng = np.random.default_rng(0)
    histories = [
        rng.choice(
            np.arange(1, NUM_ITEMS + 1), size=int(rng.integers(1, MAX_HISTORY + 1)), replace=False
        ).tolist()
        for _ in range(threads)
    ]
    assert len({tuple(h) for h in histories}) == threads
    results: dict[int, list[CandidateList]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def ask(index: int) -> None:
        try:
            barrier.wait()
            history = histories[index]
            results[index] = [
                client.recommend_one(history, 8),
                client.recommend([history, [index % NUM_ITEMS + 1]], 8),
                client.recommend_one(history, 8),
            ]
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=ask, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not errors, errors
    for index, history in enumerate(histories):
        single, pair, again = results[index]
        assert_same(single, expected([history], 8))
        assert_same(pair, expected([history, [index % NUM_ITEMS + 1]], 8))
        assert_same(again, single)


# ---------------------------------------------------------------------- TLS
def test_tls_round_trip_and_plaintext_refused(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path, "server")
    other_cert, _ = self_signed_certificate(tmp_path, "other")
    with serve(PopularitySource(), token=TOKEN, tls=TLSConfig(cert, key)) as running:
        assert running.tls
        with CandidateServiceClient(running.target, token=TOKEN, root_certificates=cert) as secure:
            assert_same(secure.recommend([[4, 8]], 6), expected([[4, 8]], 6))
        with (
            CandidateServiceClient(running.target, token=TOKEN, timeout=2.0) as plaintext,
            pytest.raises(CandidateServiceError) as error,
        ):
            plaintext.recommend([[4, 8]], 6)
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        assert "serve plaintext" in str(error.value)
        # A client that trusts a different certificate refuses the server's.
        with (
            CandidateServiceClient(running.target, token=TOKEN, root_certificates=other_cert) as mistrust,
            pytest.raises(CandidateServiceError) as untrusted,
        ):
            mistrust.info()
        assert untrusted.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_file_errors(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path, "server")
    with pytest.raises(FileNotFoundError, match=r"TLS certificate chain file not found: .*missing\.crt"):
        serve(PopularitySource(), tls=TLSConfig(tmp_path / "missing.crt", key))
    with pytest.raises(FileNotFoundError, match="TLS private key file not found"):
        serve(PopularitySource(), tls=TLSConfig(cert, tmp_path / "missing.key"))
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("not a key")
    with pytest.raises(ValueError, match=r"TLS private key file .*key\.txt is not PEM"):
        serve(PopularitySource(), tls=TLSConfig(cert, not_pem))
    with pytest.raises(FileNotFoundError, match="TLS root certificates file not found"):
        CandidateServiceClient("127.0.0.1:1", root_certificates=tmp_path / "missing-ca.crt")


# ---------------------------------------------------------------------- packaging and lifecycle
def test_busy_port_is_an_os_error(service: RunningService) -> None:
    with pytest.raises(OSError, match="could not bind"):
        serve(PopularitySource(), address=service.target)


def test_client_module_does_not_import_the_server_package() -> None:
    code = (
        "import sys, lsc4rec.client.collab.candidate_client\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('lsc4rec.server'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_recommend_for_users_answers_from_the_clouds_stored_histories() -> None:
    # User 2's stored copy is longer than max_history: its last 10 items count.
    stored = [[1, 2, 3], [], list(range(1, 31))]
    service = serve(PopularitySource(), token=TOKEN, user_histories=stored)
    with service, CandidateServiceClient(service.target, token=TOKEN) as client:
        result = client.recommend_for_users([2, 0, 1], 5)
        assert_same(result, expected([stored[2][-MAX_HISTORY:], stored[0], stored[1]], 5))
        with pytest.raises(CandidateServiceError, match=r"user_ids\[1\] = 3 is not a known user \(0\.\.2\)"):
            client.recommend_for_users([0, 3], 5)
        with pytest.raises(CandidateServiceError, match="INVALID_ARGUMENT"):
            client.recommend_for_users([0], 0)
    service = serve(PopularitySource())
    with (
        service,
        CandidateServiceClient(service.target) as client,
        pytest.raises(CandidateServiceError, match="FAILED_PRECONDITION"),
    ):
        client.recommend_for_users([0], 5)
