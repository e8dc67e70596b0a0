"""Time moving through a federated run: the arrival schedule, the cloud's view of it, and devices serving the
arrivals of a round (streaming TTT4Rec updates, stale cloud lists, requests within the budget)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from lsc4rec.client.collab.serving import CollaborationSettings
from lsc4rec.client.collab.streaming import serve_arrivals
from lsc4rec.data.readers import RawDataset
from lsc4rec.data.replay import Replay
from lsc4rec.data.split import LeaveOneOutSplit, leave_one_out
from lsc4rec.data.staleness import cloud_view
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.models.srm import build_srm


@pytest.mark.parametrize("interactions, rounds", [(1, 1), (3, 2), (4, 4), (5, 3)])
def test_every_replayed_interaction_arrives_once_in_order(interactions: int, rounds: int) -> None:
    replay = Replay(interactions, rounds)
    for length in range(1, 12):
        arrived = [p for r in range(1, rounds + 1) for p in replay.arrivals(length, r)]
        first = replay.known(length, 1)
        assert arrived == list(range(first, length))
        # The first interaction is always known; at most `interactions` arrive.
        assert first >= 1 and length - first == min(interactions, length - 1)
        assert replay.known(length, rounds + 1) == length


@pytest.mark.parametrize("interactions, rounds", [(1, 2), (2, 2), (3, 3), (5, 4)])
def test_a_closing_round_serves_nothing_and_trains_on_every_arrival(interactions: int, rounds: int) -> None:
    replay = Replay(interactions, rounds, closing_round=True)
    open_schedule = Replay(interactions, rounds - 1)
    for length in range(1, 12):
        # The first rounds - 1 rounds serve what the open schedule over rounds - 1 rounds would serve ...
        for server_round in range(1, rounds):
            assert replay.arrivals(length, server_round) == open_schedule.arrivals(length, server_round)
        # ... and the last round trains on the whole training part and serves nothing.
        assert replay.known(length, rounds) == length
        assert list(replay.arrivals(length, rounds)) == []


def test_a_closing_round_needs_a_round_to_serve_in() -> None:
    with pytest.raises(ValueError, match="rounds >= 2"):
        Replay(2, 1, closing_round=True)
    assert Replay(0, 1, closing_round=True).known(4, 1) == 4  # nothing replayed: nothing to close


def test_no_replay_knows_everything_at_round_one() -> None:
    replay = Replay(0, 5)
    assert not replay.enabled
    assert replay.known(7, 1) == 7 and list(replay.arrivals(7, 3)) == []
    with pytest.raises(ValueError, match="replay_interactions"):
        Replay(-1, 2)
    with pytest.raises(ValueError, match="round 4"):
        Replay(2, 2).known(5, 4)


def _split(sequences: list[list[int]]) -> LeaveOneOutSplit:
    raw = RawDataset(
        name="toy", source=Path("toy"), user_ids=list(range(1, len(sequences) + 1)), sequences=sequences
    )
    return leave_one_out(raw)


def test_the_cloud_trains_on_what_it_held_when_the_run_started() -> None:
    sequences = [list(range(1, 13)), list(range(20, 27)), [30, 31, 32, 33]]
    split = _split(sequences)
    replay, lag = Replay(4, 2), 2
    view = cloud_view(split, lag, replay)
    for train_part, cloud_train in zip(split.train, view.train, strict=False):
        held = replay.known(len(train_part), 1) - lag
        assert cloud_train == train_part[: held - 1]  # its last held item is its own validation target
    # The stale prompts of the validation and test moments are those of the end of the run.
    assert view.stale_valid_prompts == cloud_view(split, lag).stale_valid_prompts


class _OracleCloud:
    """A cloud that knows every user's future: its list for a history starts with the item that follows."""

    def __init__(self, sequences: Sequence[Sequence[int]], num_items: int, n: int) -> None:
        self.sequences, self.num_items, self.max_history, self.calls = sequences, num_items, 50, 0
        self.n = n

    def _next(self, history: Sequence[int]) -> int:
        for seq in self.sequences:
            if list(seq[: len(history)]) == list(history) and len(seq) > len(history):
                return int(seq[len(history)])
        return 1

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        self.calls += 1
        items = np.zeros((len(histories), n), dtype=np.int64)
        for row, history in enumerate(histories):
            first = self._next(history)
            others = [i for i in range(1, self.num_items + 1) if i != first and i not in history]
            items[row] = [first, *others[: n - 1]]
        scores = -np.arange(n, dtype=np.float32)[None, :].repeat(len(histories), axis=0)
        return CandidateList(items, scores)


def _toy_round(num_users: int = 12, num_items: int = 30) -> tuple[list[list[int]], list[list[int]]]:
    """Histories of 2-8 items and 0-3 arrivals per device, no item twice in one device's stream."""
    rng = np.random.default_rng(0)
    histories, arrivals = [], []
    for _ in range(num_users):
        stream = [int(i) for i in rng.permutation(np.arange(1, num_items + 1))[: rng.integers(2, 12)]]
        cut = max(2, len(stream) - int(rng.integers(0, 4)))
        histories.append(stream[:cut])
        arrivals.append(stream[cut:])
    return histories, arrivals


def _ttt(num_items: int):
    torch.manual_seed(0)
    return build_srm("ttt4rec", num_items, hidden_size=16, num_heads=2, intermediate_size=32, dropout=0.0)


def test_streaming_updates_rank_as_re_encoding_would() -> None:
    histories, arrivals = _toy_round()
    model = _ttt(30)
    streamed = serve_arrivals(model, histories, arrivals, max_len=20, ks=(5, 10))
    assert streamed["streaming-updates"] == streamed["replay-arrivals"] == sum(map(len, arrivals))

    class ReEncoding(torch.nn.Module):
        supports_streaming = False

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def score_all(self, history: torch.Tensor) -> torch.Tensor:
            return self.inner.score_all(history)

    reencoded = serve_arrivals(ReEncoding(model), histories, arrivals, max_len=20, ks=(5, 10))  # type: ignore[arg-type]
    assert reencoded["streaming-updates"] == 0
    for key in ("replay-device-NDCG@10", "replay-device-HR@5", "replay-device-MRR@10"):
        assert streamed[key] == pytest.approx(reencoded[key], abs=1e-6)


def test_only_devices_something_arrives_at_are_encoded(monkeypatch) -> None:
    """The streaming states are prefilled for the devices with arrivals only (none in an empty round)."""
    histories, arrivals = _toy_round()
    assert any(not a for a in arrivals) and any(arrivals)
    model = _ttt(30)
    encoded: list[int] = []
    prefill = model.prefill

    def counting_prefill(history: torch.Tensor):
        encoded.append(history.shape[0])
        return prefill(history)

    monkeypatch.setattr(model, "prefill", counting_prefill)
    serve_arrivals(model, histories, arrivals, max_len=20, ks=(10,))
    assert sum(encoded) == sum(1 for a in arrivals if a) < len(histories)
    encoded.clear()
    serve_arrivals(model, histories, [[] for _ in histories], max_len=20, ks=(10,))
    assert encoded == []


def test_requests_replace_stale_lists_within_the_budget() -> None:
    histories, arrivals = _toy_round()
    full = [h + a for h, a in zip(histories, arrivals, strict=True)]
    model = _ttt(30)
    cloud = _OracleCloud(full, 30, n=10)
    # The cloud's stale copy lags two interactions: its list predicts an item the device already has.
    stale = cloud.recommend([h[:-2] for h in histories], 10)
    arrived = sum(map(len, arrivals))

    def run(mode: str, ratio: float) -> dict[str, float]:
        settings = CollaborationSettings(
            candidates=10, alpha=1.0, mode=mode, ratio=ratio, device_candidates=5
        )
        return serve_arrivals(
            model,
            histories,
            arrivals,
            20,
            (1, 10),
            cloud=cloud,
            stale=stale,
            settings=settings,
            generator=torch.Generator().manual_seed(0),
        )

    never, always, budget = run("never", 0.0), run("always", 1.0), run("intelligent", 0.5)
    assert never["replay-requests"] == 0 and never["replay-request-bytes"] == 0
    assert always["replay-requests"] == arrived
    # Fresh lists from an oracle put every arrival first; the stale ones rarely do.
    assert always["replay-collab-HR@1"] == pytest.approx(1.0)
    assert always["replay-collab-before-request-HR@1"] < 0.5
    assert never["replay-collab-HR@1"] == never["replay-collab-before-request-HR@1"] < 0.5
    assert 0 < budget["replay-requests"] < arrived


def test_a_round_without_arrivals_reports_counts_not_an_error() -> None:
    # More rounds than replayed interactions (e.g. 2 over 5 rounds): some rounds have nothing arriving.
    schedule = Replay(2, 5)
    assert [len(schedule.arrivals(8, r)) for r in range(1, 6)] == [0, 0, 1, 0, 1]
    histories, _ = _toy_round()
    model = _ttt(30)
    alone = serve_arrivals(model, histories, [[] for _ in histories], max_len=20, ks=(5, 10))
    assert alone["replay-arrivals"] == 0 and alone["streaming-updates"] == 0
    assert not any(key.startswith("replay-device-") for key in alone)
    cloud = _OracleCloud(histories, 30, n=10)
    settings = CollaborationSettings(candidates=10, alpha=0.5, mode="always", ratio=1.0, device_candidates=5)
    fused = serve_arrivals(
        model,
        histories,
        [[] for _ in histories],
        20,
        (10,),
        cloud=cloud,
        stale=cloud.recommend(histories, 10),
        settings=settings,
        generator=torch.Generator().manual_seed(0),
    )
    assert fused["replay-requests"] == 0 and "replay-collab-NDCG@10" not in fused


def test_devices_scored_in_chunks_serve_and_test_exactly_as_in_one_batch(monkeypatch) -> None:
    """A node scores its devices a chunk at a time (memory bounded by the chunk, not the node's thousands of
    devices): serving the arrivals (streaming states prefilled per chunk and joined) and the test phase's
    request modes give the same metrics as one batch."""
    from lsc4rec.client.collab import inference
    from lsc4rec.client.collab.serving import serve_devices_in_modes

    histories, arrivals = _toy_round()
    full = [h + a for h, a in zip(histories, arrivals, strict=True)]
    model = _ttt(30)
    cloud = _OracleCloud(full, 30, n=10)
    stale = cloud.recommend([h[:-2] for h in histories], 10)
    settings = CollaborationSettings(
        candidates=10, alpha=0.5, mode="intelligent", ratio=0.5, device_candidates=5
    )

    def both() -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        served = serve_arrivals(model, histories, arrivals, 20, (5, 10), cloud=cloud, stale=stale,
                                settings=settings, generator=torch.Generator().manual_seed(0))  # fmt: skip
        modes = {m: torch.Generator().manual_seed(1) for m in ("intelligent", "always")}
        tested = serve_devices_in_modes(model, full, [h[-1] for h in full], stale, cloud, settings, modes, 20)
        return served, tested

    whole = both()
    monkeypatch.setattr(inference, "SCORING_CHUNK", 3)
    assert len(histories) > 3
    chunked = both()
    assert whole[0]["streaming-updates"] == chunked[0]["streaming-updates"] > 0
    for key, value in whole[0].items():
        if key != "replay-seconds":
            assert chunked[0][key] == pytest.approx(value, abs=1e-6), key
    for mode, metrics in whole[1].items():
        assert chunked[1][mode] == pytest.approx(metrics, abs=1e-6), mode
