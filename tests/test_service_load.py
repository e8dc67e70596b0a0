"""The candidate service's load drill (benchmarks/candidate_service_load.py), short: 16 concurrent clients for
3 s mixing valid and hostile requests against a small in-process service. The drill's own code runs here (the
request kinds, the client loop, the tally, the comparison with the server's counters), and the tests below
check that it would notice a service that accepts what it must refuse or breaks the reply contract."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from test_candidate_service import MAX_HISTORY, NUM_ITEMS, TOKEN, PopularitySource

from lsc4rec.client.collab.candidate_client import CandidateServiceClient
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.proto.service_metrics import MethodStats, MetricsSnapshot
from lsc4rec.serving import RunningService, serve

# The benchmarks folder holds scripts, not a package: put it on the path the way running the script does.
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
import candidate_service_load as load  # noqa: E402

#: Users in the service's store (and the histories the clients send).
USERS = 200
#: Small enough that an oversized batch is cheap to send; the receive limit is then gRPC's floor of 1 MiB.
MAX_BATCH = 32


def user_histories() -> list[list[int]]:
    """Seeded histories of 1..MAX_HISTORY known items."""
    rng = np.random.default_rng(3)
    return [
        rng.integers(1, NUM_ITEMS + 1, size=int(rng.integers(1, MAX_HISTORY + 1))).tolist()
        for _ in range(USERS)
    ]


class HistoryLeakingSource(PopularitySource):
    """Breaks the candidate contract: the last history item comes back as the best candidate."""

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        result = super().recommend(histories, n)
        for row, history in enumerate(histories):
            result.items[row, 0] = history[-1]
        return result


def start(source: PopularitySource | None = None) -> RunningService:
    """A small service with token auth and a user-history store."""
    return serve(
        source or PopularitySource(delay=0.0),
        token=TOKEN,
        max_batch=MAX_BATCH,
        user_histories=user_histories(),
    )


def workload(service: RunningService, **info_changes: int) -> load.Workload:
    """The drill's workload for ``service``; ``info_changes`` make the clients believe other limits."""
    with CandidateServiceClient(service.target, token=TOKEN) as client:
        info = dataclasses.replace(client.info(), **info_changes)
    histories = user_histories()
    return load.Workload(
        histories=histories,
        stored=histories,
        info=info,
        token=TOKEN,
        timeout=10.0,
        big_payload=load.oversized_payload(2 << 20, NUM_ITEMS, MAX_HISTORY),
    )


@pytest.fixture(scope="module")
def drill() -> Iterator[tuple[load.LoadRun, MetricsSnapshot]]:
    """16 clients for 3 s, half the requests invalid; the run and the server's counters over it."""
    with start() as service, CandidateServiceClient(service.target, token=TOKEN) as probe:
        before = probe.metrics()
        run = load.run_load(
            service.target,
            workload(service),
            clients=16,
            seconds=3.0,
            invalid_share=0.5,
            seed=1,
            server_pid=os.getpid(),
            # Every kind equally often, so even a slow CI machine sends each one many times.
            kinds=[dataclasses.replace(kind, weight=1.0) for kind in load.request_kinds()],
        )
        yield run, load.settled_metrics(probe).since(before)


def test_no_unexpected_error_and_every_valid_reply_checked(
    drill: tuple[load.LoadRun, MetricsSnapshot],
) -> None:
    run, _ = drill
    summary = load.summarize(run)
    assert summary["calls"] > 200, summary["calls"]
    assert summary["unexpected_errors"] == 0, summary["unexpected_examples"]
    assert summary["client_crashes"] == []
    assert summary["admission_refusals_of_valid_requests"] == 0
    assert summary["replies_checked"] == summary["replies_owed_a_check"] > 100
    assert summary["rows_checked"] >= summary["replies_checked"]
    assert summary["contract_violations"] == 0, summary["unexpected_examples"]
    assert summary["valid_latency_ms"]["count"] > 0
    # Every kind was sent and ended with one of its expected codes, invalid ones refused at least once.
    per_kind = summary["per_kind"]
    for kind in run.kinds:
        assert kind.name in per_kind, f"{kind.name} never sent"
        assert set(per_kind[kind.name]) <= kind.expected, (kind.name, per_kind[kind.name])
        refusals = kind.expected - {"OK"}
        if refusals:
            assert refusals & set(per_kind[kind.name]), (kind.name, per_kind[kind.name])


def test_server_counted_what_the_clients_saw(drill: tuple[load.LoadRun, MetricsSnapshot]) -> None:
    run, server = drill
    comparison = load.compare_with_server(run, server)
    assert comparison["matches"], comparison["mismatches"]
    # gRPC answered the oversized requests itself: the service never counted them (undecodable bytes reach
    # the service's own decoding and are counted like any refusal).
    assert set(comparison["never_reach_the_service"]) == {"big_payload"}
    counted = sum(server.stats(method).calls for method in load.METHODS)
    never = sum(comparison["never_reach_the_service"].values())
    assert counted <= run.tally.calls - never


def test_the_drill_catches_a_service_that_accepts_an_invalid_request() -> None:
    # The clients believe max_history is half the real one: their "too long" histories are mostly accepted.
    kinds = [kind for kind in load.request_kinds() if kind.name in ("recommend", "long_history")]
    with start() as service:
        run = load.run_load(
            service.target,
            workload(service, max_history=MAX_HISTORY // 2),
            clients=4,
            seconds=1.0,
            invalid_share=0.5,
            seed=2,
            server_pid=os.getpid(),
            kinds=kinds,
        )
    summary = load.summarize(run)
    assert summary["per_kind"]["long_history"].get("OK", 0) > 0
    assert summary["unexpected_errors"] == summary["per_kind"]["long_history"]["OK"]
    assert {(e["kind"], e["code"]) for e in summary["unexpected_examples"]} == {("long_history", "OK")}
    memory = {"bounded": True}
    assert not load.verdict(summary, memory, {"matches": True})["passed"]


def test_the_drill_catches_a_reply_that_breaks_the_contract() -> None:
    kinds = [kind for kind in load.request_kinds() if kind.valid]
    with start(HistoryLeakingSource(delay=0.0)) as service:
        run = load.run_load(
            service.target,
            workload(service),
            clients=2,
            seconds=0.5,
            invalid_share=0.0,
            seed=3,
            server_pid=os.getpid(),
            kinds=kinds,
        )
    summary = load.summarize(run)
    assert summary["unexpected_errors"] == 0  # the calls succeeded ...
    assert summary["contract_violations"] == summary["rows_checked"] > 0  # ... but every row is broken
    assert not load.verdict(summary, {"bounded": True}, {"matches": True})["passed"]


def _run_with(codes: dict[tuple[str, str], dict[str, int]]) -> load.LoadRun:
    tally = load.Tally()
    tally.codes = {key: Counter(counts) for key, counts in codes.items()}
    return load.LoadRun(tally, [], 1.0, load.request_kinds())


def _server(codes: dict[str, dict[str, int]]) -> MetricsSnapshot:
    return MetricsSnapshot({method: MethodStats(dict(counts)) for method, counts in codes.items()})


def test_server_count_comparison() -> None:
    run = _run_with(
        {
            ("recommend", "Recommend"): {"OK": 5},
            ("n_negative", "Recommend"): {"INVALID_ARGUMENT": 2},
            ("bad_token", "Recommend"): {"UNAUTHENTICATED": 1},
            ("big_payload", "Recommend"): {"RESOURCE_EXHAUSTED": 4},  # never reaches the service
            ("short_deadline", "Recommend"): {"OK": 1, "DEADLINE_EXCEEDED": 3},
        }
    )
    exact = {"OK": 6, "INVALID_ARGUMENT": 2, "UNAUTHENTICATED": 1}
    # Two of the three calls that timed out were counted (one cancelled, one refused at its deadline).
    matching = _server({"Recommend": {**exact, "CANCELLED": 1, "DEADLINE_EXCEEDED": 1}})
    assert load.compare_with_server(run, matching)["matches"]
    for wrong in (
        {**exact, "OK": 5},  # a call the client saw answered was not counted
        {**exact, "INVALID_ARGUMENT": 3},  # a refusal the client never saw
        {**exact, "RESOURCE_EXHAUSTED": 1},  # an oversized request reached the service
        {**exact, "CANCELLED": 4},  # more late calls than timed out on the client
    ):
        comparison = load.compare_with_server(run, _server({"Recommend": wrong}))
        assert not comparison["matches"], wrong


def test_memory_verdict() -> None:
    flat = [{"t": float(t), "rss_mib": 300.0 + (t % 3)} for t in range(61)]
    verdict = load.memory_verdict(flat, threshold_mib=50.0, threshold_pct=5.0)
    assert verdict["bounded"] is True
    assert verdict["start_mib"] == 300.0 and verdict["peak_mib"] == 302.0
    leaking = [{"t": float(t), "rss_mib": 300.0 + 2.0 * t} for t in range(61)]
    verdict = load.memory_verdict(leaking, threshold_mib=50.0, threshold_pct=5.0)
    assert verdict["bounded"] is False
    assert verdict["growth_last_third_mib"] == pytest.approx(80.0)
    assert verdict["slope_after_first_third_mib_per_min"] == pytest.approx(120.0)
    # The percentage wins above 1 GiB: 5 % of 2000 MiB is 100 MiB.
    big = [{"t": float(t), "rss_mib": 2000.0 + (90.0 if t > 40 else 0.0)} for t in range(61)]
    assert load.memory_verdict(big, threshold_mib=50.0, threshold_pct=5.0)["bounded"] is True
    assert load.memory_verdict([], threshold_mib=50.0, threshold_pct=5.0)["bounded"] is None
