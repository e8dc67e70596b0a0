"""``PositionCandidatesForUsers`` and the replaceable user-history store of the gRPC candidate service.

A tiny untrained :class:`CloudLLM` serves on loopback: these tests check the transport, batching,
validation and the store's updates against the model's own ``position_candidates``, not accuracy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import grpc
import numpy as np
import pytest
import torch

from lsc4rec.client.collab.candidate_client import CandidateServiceClient, CandidateServiceError
from lsc4rec.data.batching import pad_left
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.proto import candidate_service_pb2 as pb
from lsc4rec.proto import candidate_service_pb2_grpc as pb_grpc
from lsc4rec.serving import RunningService, serve

NUM_ITEMS = 30
MAX_LEN = 8
MAX_N = 40
# User 2's history is longer than max_history (its last 8 items count); user 1 has none yet.
STORED = [[3, 4, 5], [], list(range(1, 13)), [7], [2, 9, 11, 20, 21]]


def tiny_llm(**kwargs: object) -> CloudLLM:
    """A one-layer, untrained Llama over one token per item (milliseconds per forward pass)."""
    return CloudLLM.from_scratch(
        NUM_ITEMS,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_len=MAX_LEN,
        dropout=0.0,
        seed=3,
        **kwargs,  # type: ignore[arg-type]
    )


def reference(llm: CloudLLM, histories: Sequence[Sequence[int]], k: int) -> list[np.ndarray]:
    """``llm.position_candidates`` on the same (cut) histories in one left-padded batch, as ``[P_u, k]``."""
    kept = [list(h)[-MAX_LEN:] for h in histories]
    width = max(len(h) for h in kept)
    rows = [h for h in kept if h]
    top = llm.position_candidates(pad_left(rows, width), k).numpy() if rows else None
    out, row = [], 0
    for history in kept:
        result = np.zeros((len(history), k), dtype=np.int64)
        if top is not None and history:
            result[:, : top.shape[2]] = top[row, width - len(history) :]
            row += 1
        out.append(result)
    return out


def assert_same_positions(actual: list[np.ndarray], wanted: list[np.ndarray]) -> None:
    assert len(actual) == len(wanted)
    for got, want in zip(actual, wanted, strict=True):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def llm() -> CloudLLM:
    return tiny_llm()


@pytest.fixture(scope="module")
def service(llm: CloudLLM) -> Iterator[RunningService]:
    with serve(llm, max_n=MAX_N, user_histories=STORED) as running:
        yield running


@pytest.fixture(scope="module")
def client(service: RunningService) -> Iterator[CandidateServiceClient]:
    with CandidateServiceClient(service.target, timeout=30.0) as c:
        yield c


def count_calls(client: CandidateServiceClient, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many users each ``PositionCandidatesForUsers`` call of ``client`` carries."""
    sizes: list[int] = []
    rpc = client._stub.PositionCandidatesForUsers

    def counting(request: pb.PositionCandidatesForUsersRequest, **kwargs: object) -> object:
        sizes.append(len(request.user_ids))
        return rpc(request, **kwargs)

    monkeypatch.setattr(client._stub, "PositionCandidatesForUsers", counting)
    return sizes


# ---------------------------------------------------------------------- results
def test_reply_equals_the_llms_position_candidates(llm: CloudLLM, client: CandidateServiceClient) -> None:
    users = [2, 1, 0, 4, 3, 0]
    result = client.position_candidates_for_users(users, 5, request_id="pos-1")
    wanted = reference(llm, [STORED[u] for u in users], 5)
    assert_same_positions(result, wanted)
    # One row per stored item (cut to max_history), none for the empty history.
    assert [r.shape for r in result] == [(8, 5), (0, 5), (3, 5), (5, 5), (1, 5), (3, 5)]
    assert (result[0] > 0).all()
    assert client.position_candidates_for_users([], 5) == []


def test_scores_come_only_when_asked_and_are_the_llms(llm: CloudLLM, client: CandidateServiceClient) -> None:
    users = [2, 0, 4]
    plain = client.position_candidate_scores_for_users(users, 5, with_scores=False)
    assert all(scores is None for _, scores in plain)
    scored = client.position_candidate_scores_for_users(users, 5)
    assert_same_positions([items for items, _ in scored], reference(llm, [STORED[u] for u in users], 5))
    for user, (items, scores) in zip(users, scored, strict=True):
        history = torch.tensor([list(STORED[user])[-MAX_LEN:]])  # the service keeps the last MAX_LEN
        want_items, want_scores = llm.position_candidate_scores(history, 5)
        assert scores is not None and scores.dtype == np.float32 and scores.shape == items.shape
        np.testing.assert_array_equal(items, want_items[0].numpy())
        np.testing.assert_allclose(scores, want_scores[0].numpy(), rtol=1e-5, atol=1e-5)
        # Best first: scores fall along each list.
        assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_k_above_the_catalogue_leaves_empty_slots(llm: CloudLLM, client: CandidateServiceClient) -> None:
    result = client.position_candidates_for_users([4, 1], 35)
    assert_same_positions(result, reference(llm, [STORED[4], STORED[1]], 35))
    assert result[0].shape == (5, 35)
    assert (result[0][:, NUM_ITEMS:] == 0).all()
    assert sorted(result[0][0, :NUM_ITEMS].tolist()) == list(range(1, NUM_ITEMS + 1))


def test_server_batches_one_forward_pass_per_group(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = tiny_llm()
    llm.batch_size = 2  # 4 non-empty histories: 2 model batches (the empty one never reaches the model)
    widths: list[tuple[int, int]] = []
    original = llm.position_candidates

    def recording(inputs: torch.Tensor, k: int) -> torch.Tensor:
        widths.append(tuple(inputs.shape))
        return original(inputs, k)

    monkeypatch.setattr(llm, "position_candidates", recording)
    with (
        serve(llm, max_n=MAX_N, user_histories=STORED) as running,
        CandidateServiceClient(running.target) as c,
    ):
        users = [0, 1, 2, 3, 4]
        result = c.position_candidates_for_users(users, 4)
    # Sorted by length: [7] with [3, 4, 5], then the 5- and 8-item histories; each as wide as its longest.
    assert widths == [(2, 3), (2, 8)]
    for user, rows in zip(users, result, strict=True):
        assert_same_positions([rows], reference(llm, [STORED[user]], 4))


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "users, k, fragment",
    [
        pytest.param([0], 0, "k = 0 is outside 1..40 (k was not set?)", id="k-unset"),
        pytest.param([0], -2, "k = -2 is outside 1..40", id="k-negative"),
        pytest.param([0], 41, "k = 41 is outside 1..40", id="k-above-max-n"),
        pytest.param([0, 5], 3, "user_ids[1] = 5 is not a known user (0..4)", id="unknown-user"),
        pytest.param([-1], 3, "user_ids[0] = -1 is not a known user (0..4)", id="negative-user"),
    ],
)
def test_bad_request_is_invalid_argument(
    client: CandidateServiceClient, users: list[int], k: int, fragment: str
) -> None:
    with pytest.raises(CandidateServiceError) as error:
        client.position_candidates_for_users(users, k)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.value.details


def test_client_splits_calls_under_the_reply_limit(llm: CloudLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    # max_position_ids = max(max_batch, max_history) * max_n = 8 * 10 = 80 ids; at k = 5 a user may take
    # 8 * 5 = 40 of them, so 2 users per call; at k = 1 max_batch = 3 is the tighter limit.
    users = [4, 0, 2, 1, 3, 2, 0]
    with (
        serve(llm, max_n=10, max_batch=3, user_histories=STORED) as running,
        CandidateServiceClient(running.target) as small,
        grpc.insecure_channel(running.target) as channel,
    ):
        assert small.info().max_position_ids == 80
        assert small.info().max_position_users(5) == 2
        sizes = count_calls(small, monkeypatch)
        assert_same_positions(
            small.position_candidates_for_users(users, 5), reference(llm, [STORED[u] for u in users], 5)
        )
        assert sizes == [2, 2, 2, 1]
        sizes.clear()
        assert_same_positions(
            small.position_candidates_for_users(users, 1), reference(llm, [STORED[u] for u in users], 1)
        )
        assert sizes == [3, 3, 1]
        # The server refuses what the client would have split.
        stub = pb_grpc.CandidateServiceStub(channel)
        for request, fragment in (
            (pb.PositionCandidatesForUsersRequest(user_ids=[0, 1, 2], k=5), "more than 2 for k = 5"),
            (pb.PositionCandidatesForUsersRequest(user_ids=[0, 1, 2, 3], k=1), "more than max_batch = 3"),
            (pb.PositionCandidatesForUsersRequest(k=1), "user_ids is empty"),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.PositionCandidatesForUsers(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert fragment in refused.value.details()


class _NoPositions:
    """A candidate source without ``position_candidates`` (e.g. a popularity baseline)."""

    num_items = NUM_ITEMS
    max_history = MAX_LEN

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        items = np.tile(np.arange(1, n + 1, dtype=np.int64), (len(histories), 1))
        return CandidateList(items, -np.tile(np.arange(n, dtype=np.float32), (len(histories), 1)))


def semantic_llm() -> CloudLLM:
    """A CloudLLM writing each item as two codes: it has position_candidates but cannot use it."""
    codes = torch.tensor([[0, 0]] + [[(i - 1) // 6, (i - 1) % 6] for i in range(1, NUM_ITEMS + 1)])
    return tiny_llm(semantic_ids=codes, semantic_sizes=[5, 6])


@pytest.mark.parametrize(
    "make_source, fragment",
    [
        pytest.param(_NoPositions, "(_NoPositions) has no position_candidates", id="no-method"),
        pytest.param(semantic_llm, "needs one token per item", id="semantic-ids"),
    ],
)
def test_source_without_position_candidates_is_unimplemented(
    make_source: Callable[[], object], fragment: str
) -> None:
    with (
        serve(make_source(), user_histories=STORED) as running,  # type: ignore[arg-type]
        CandidateServiceClient(running.target, timeout=10.0) as c,
        pytest.raises(CandidateServiceError) as error,
    ):
        c.position_candidates_for_users([0], 3)
    assert error.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert fragment in error.value.details


def test_without_a_store_is_failed_precondition(llm: CloudLLM) -> None:
    with (
        serve(llm) as running,
        CandidateServiceClient(running.target, timeout=10.0) as c,
        pytest.raises(CandidateServiceError) as error,
    ):
        c.position_candidates_for_users([0], 3)
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(ValueError, match="started without user_histories"):
        running.update_user_histories([[1]])


# ---------------------------------------------------------------------- updating the store
def test_update_user_histories_moves_both_rpcs_forward(llm: CloudLLM) -> None:
    newer = [[3, 4, 5, 6, 7], [12], list(range(1, 13)), [7, 8], [2, 9, 11, 20, 21]]
    users = [0, 1, 3]
    with (
        serve(llm, max_n=MAX_N, user_histories=STORED) as running,
        CandidateServiceClient(running.target, timeout=30.0) as c,
    ):
        before = c.recommend_for_users(users, 5)
        np.testing.assert_array_equal(before.items, llm.recommend([STORED[u] for u in users], 5).items)
        assert_same_positions(
            c.position_candidates_for_users(users, 4), reference(llm, [STORED[u] for u in users], 4)
        )

        running.update_user_histories(newer)
        after = c.recommend_for_users(users, 5)
        np.testing.assert_array_equal(after.items, llm.recommend([newer[u] for u in users], 5).items)
        assert not np.array_equal(after.items, before.items)
        positions = c.position_candidates_for_users(users, 4)
        assert_same_positions(positions, reference(llm, [newer[u] for u in users], 4))
        assert [p.shape[0] for p in positions] == [5, 1, 2]

        # A bad update is refused whole: the store keeps serving the last good histories.
        with pytest.raises(ValueError, match="user_histories has 4 users, but the service stores 5"):
            running.update_user_histories(newer[:4])
        with pytest.raises(ValueError, match=r"user_histories\[1\]\[0\] = 31 is not an item id"):
            running.update_user_histories([[1], [31], [], [], []])
        np.testing.assert_array_equal(c.recommend_for_users(users, 5).items, after.items)


def test_bad_stored_histories_are_refused_at_start(llm: CloudLLM) -> None:
    with pytest.raises(
        ValueError, match=r"user_histories\[0\]\[2\] = 0 is not an item id \(valid ids are 1\.\.30\)"
    ):
        serve(llm, user_histories=[[1, 2, 0]])


def test_requests_during_updates_see_one_whole_version(llm: CloudLLM) -> None:
    # Two versions of the store that answer differently; every reply must come from one of them, whole.
    first = [[1, 2, 3], [4, 5]]
    second = [[10, 11], [12, 13, 14]]
    errors: list[BaseException] = []
    seen: list[tuple[bytes, ...]] = []
    stop = threading.Event()
    with (
        serve(llm, user_histories=first) as running,
        CandidateServiceClient(running.target, timeout=30.0) as c,
    ):

        def answer() -> tuple[bytes, ...]:
            return tuple(p.tobytes() for p in c.position_candidates_for_users([0, 1], 3))

        expected_first = answer()
        running.update_user_histories(second)
        expected_second = answer()
        assert expected_first != expected_second

        def ask() -> None:
            try:
                while not stop.is_set():
                    seen.append(answer())
            except BaseException as error:
                errors.append(error)

        workers = [threading.Thread(target=ask) for _ in range(4)]
        for worker in workers:
            worker.start()
        for flip in range(20):
            running.update_user_histories(first if flip % 2 == 0 else second)
            time.sleep(0.005)  # let the readers in between updates
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not errors, errors
    assert seen and set(seen) <= {expected_first, expected_second}
