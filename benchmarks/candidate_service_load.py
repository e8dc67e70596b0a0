"""Load drill: many concurrent gRPC clients mixing valid and hostile requests against the candidate service.

    python benchmarks/candidate_service_load.py               # 128 clients, 60 s, popularity source on Beauty
    python benchmarks/candidate_service_load.py --clients 32 --seconds 20 --invalid-share 0.5
    python benchmarks/candidate_service_load.py --source llm --llm-path outputs/llm/run-x/model

Starts the candidate service in its own process (token auth, the cloud's user-history store filled with the
users' leave-one-out test histories so ``RecommendForUsers`` has something to answer from, its log written to
``candidate_service_load.server.log``), then runs ``--clients`` threads for ``--seconds``, each with its own
channel, each drawing a seeded random mix of request kinds (:func:`request_kinds`): valid ``Recommend``,
``RecommendBatch`` and ``RecommendForUsers`` calls on real histories (``1 - --invalid-share`` of the calls),
and invalid ones: empty / too long histories, unknown and negative item ids, ``n`` of 0, negative or above
``max_n``, unknown users, an oversized batch, an over-long request id, a payload of several MiB, undecodable
bytes, a field of the wrong wire type, a bad or missing token, and a deadline of a few milliseconds.

Every kind has the set of status codes it may end with; anything else (a gRPC status outside that set, an
exception that is not a gRPC status) is an UNEXPECTED error. Every OK reply to a valid request is checked:
one reply per row, ``n`` distinct items, none from the history (for ``RecommendForUsers``: the stored history
the server answers from), ids in the catalogue, scores non-increasing, request id echoed.
``RESOURCE_EXHAUSTED`` on a valid request (admission control: more than ``max_queue`` = 1024 calls waiting)
is counted separately and is unexpected: 128 clients can never have more than 128 calls in flight.

The server process's resident memory (``VmRSS``) is sampled every second. Memory is "bounded" when the
highest sample of the last third of the run is at most ``max(--memory-threshold-mib, --memory-threshold-pct
% of it)`` above the sample at the end of the first third. At the end the server's own counters (``Metrics``
rpc) are compared with what the clients saw, per method and status: calls gRPC refuses before the service's
code runs (a message over the size limit) are never counted by the server, and a call
whose few-millisecond deadline passes may be counted as ``DEADLINE_EXCEEDED``, ``CANCELLED``, ``OK`` or not
at all; every other call must be counted exactly once with the status the client saw.

Writes ``outputs/benchmarks/candidate_service_load.json`` and a PNG next to it (server RSS and requests/s over
time) and prints ``RESULT {json}``; the exit status is 1 when the verdict fails.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import re
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

# A sibling module: importable because Python puts this script's folder first on sys.path (tests add it).
from candidate_service_throughput import (
    ServerHandle,
    check_reply,
    load_split,
)

from lsc4rec.argument_types import existing_dir, fraction, non_negative_float, positive_float, positive_int
from lsc4rec.client.collab.candidate_client import CandidateServiceClient, CandidateServiceInfo
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.proto import candidate_service_pb2 as pb
from lsc4rec.proto.service_metrics import MetricsSnapshot
from lsc4rec.reporting import emit_result, peak_memory_mb, process_memory_mib, write_json

logger = logging.getLogger("candidate_service_load")

#: The service's full gRPC name: every method is ``/<SERVICE>/<Method>``.
SERVICE = pb.DESCRIPTOR.services_by_name["CandidateService"].full_name
#: Methods the drill sends to (the server's counters are compared on these).
METHODS = ("Recommend", "RecommendBatch", "RecommendForUsers")
#: Most histories (or users) in one valid batch request.
MAX_VALID_ROWS = 8
#: The client accepts replies up to this size (the service's largest is far below).
MAX_REPLY_BYTES = 64 << 20
#: Unexpected errors kept verbatim in the report (the count is always exact).
KEPT_EXAMPLES = 20

# How the server counts a kind's calls (see compare_with_server).
EXACT = "exact"  # the handler (or the auth interceptor) counts every call with the status the client saw
NEVER = "never"  # gRPC refuses the call before any of the service's code runs
AT_MOST = "at most"  # a call that ran out of deadline may be counted with another status, or not at all


# ---------------------------------------------------------------------- request kinds
@dataclass(frozen=True)
class Workload:
    """What requests are made of: real histories, the server's user store, its limits, and the token."""

    #: Valid histories (1..max_history known item ids each), e.g. users' leave-one-out test histories.
    histories: Sequence[Sequence[int]]
    #: The server's per-user store as it answers from it (each history's last ``max_history`` items).
    stored: Sequence[Sequence[int]]
    info: CandidateServiceInfo
    token: str
    #: Client deadline of every call but the short-deadline kind, seconds.
    timeout: float
    #: A serialized ``RecommendBatchRequest`` larger than the server accepts (``big_payload``).
    big_payload: bytes


@dataclass(frozen=True)
class Request:
    """One call to make: the method, its serialized request, credentials, deadline, and what a valid reply
    must match (``rows``: the histories the candidates must avoid; None for an invalid request)."""

    method: str
    payload: bytes
    metadata: tuple[tuple[str, str], ...] | None
    timeout: float
    n: int = 0
    request_id: str = ""
    rows: Sequence[Sequence[int]] | None = None


@dataclass(frozen=True)
class RequestKind:
    """A kind of request: how to build one, the status codes it may end with, and how the server counts it."""

    name: str
    valid: bool
    #: Status code names that are expected; anything else is an unexpected error.
    expected: frozenset[str]
    build: Callable[[Workload, random.Random, str], Request]
    #: EXACT, NEVER or AT_MOST (see compare_with_server).
    server_counts: str = EXACT
    #: Relative frequency within the valid or the invalid kinds.
    weight: float = 1.0


def _auth(workload: Workload) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {workload.token}"),)


def _history(workload: Workload, rng: random.Random) -> list[int]:
    return list(workload.histories[rng.randrange(len(workload.histories))])


def _items(workload: Workload, rng: random.Random, length: int) -> list[int]:
    """``length`` known item ids (valid as a history's items, whatever the length)."""
    return [rng.randint(1, workload.info.num_items) for _ in range(length)]


def _n(workload: Workload, rng: random.Random) -> int:
    return rng.randint(1, workload.info.max_n)


def _request(
    workload: Workload,
    method: str,
    message: Any,
    n: int,
    request_id: str,
    expected: list[list[int]] | None,
    metadata: tuple[tuple[str, str], ...] | None,
    timeout: float | None,
) -> Request:
    """A call of ``method`` with the serialized ``message``; ``expected``: the histories a valid reply is
    checked against (None for an invalid request); the workload's token and deadline unless overridden."""
    return Request(
        method,
        message.SerializeToString(),
        _auth(workload) if metadata is None else metadata,
        workload.timeout if timeout is None else timeout,
        n,
        request_id,
        expected,
    )


def _recommend(
    workload: Workload,
    history: Sequence[int],
    n: int,
    request_id: str,
    valid: bool,
    metadata: tuple[tuple[str, str], ...] | None = None,
    timeout: float | None = None,
) -> Request:
    message = pb.RecommendRequest(history=list(history), n=n, request_id=request_id)
    expected = [list(history)] if valid else None
    return _request(workload, "Recommend", message, n, request_id, expected, metadata, timeout)


def _batch(
    workload: Workload,
    histories: Sequence[Sequence[int]],
    n: int,
    request_id: str,
    valid: bool,
    metadata: tuple[tuple[str, str], ...] | None = None,
    timeout: float | None = None,
) -> Request:
    message = pb.RecommendBatchRequest(
        histories=[pb.History(items=list(h)) for h in histories], n=n, request_id=request_id
    )
    expected = [list(h) for h in histories] if valid else None
    return _request(workload, "RecommendBatch", message, n, request_id, expected, metadata, timeout)


def _for_users(
    workload: Workload,
    users: Sequence[int],
    n: int,
    request_id: str,
    valid: bool,
    metadata: tuple[tuple[str, str], ...] | None = None,
    timeout: float | None = None,
) -> Request:
    message = pb.RecommendForUsersRequest(user_ids=list(users), n=n, request_id=request_id)
    expected = [list(workload.stored[u]) for u in users] if valid else None
    return _request(workload, "RecommendForUsers", message, n, request_id, expected, metadata, timeout)


def _valid_request(
    workload: Workload,
    rng: random.Random,
    request_id: str,
    metadata: tuple[tuple[str, str], ...] | None = None,
    timeout: float | None = None,
) -> Request:
    """A valid request of a random method (for the kinds that spoil only the call, not the message)."""
    method = rng.choice(METHODS)
    if method == "Recommend":
        return _recommend(
            workload, _history(workload, rng), _n(workload, rng), request_id, True, metadata, timeout
        )
    rows = rng.randint(1, MAX_VALID_ROWS)
    if method == "RecommendBatch":
        histories = [_history(workload, rng) for _ in range(rows)]
        return _batch(workload, histories, _n(workload, rng), request_id, True, metadata, timeout)
    users = [rng.randrange(len(workload.stored)) for _ in range(rows)]
    return _for_users(workload, users, _n(workload, rng), request_id, True, metadata, timeout)


def _bad_n(workload: Workload, rng: random.Random, kind: str) -> int:
    if kind == "zero":
        return 0
    if kind == "negative":
        return -rng.randint(1, 2**31 - 1)
    return rng.randint(workload.info.max_n + 1, 2**31 - 1)


def _undecodable(rng: random.Random) -> bytes:
    """Bytes no request message of the service parses from (each checked against all three)."""
    return rng.choice(
        [
            b"\xff\xfe\xfd\x00garbage",  # a tag of wire type 7, which does not exist
            b"\x0a\x05\x01\x02",  # field 1, length 5, but only 2 bytes follow
            b"\x10" + b"\xff" * 11,  # field 2 as a varint longer than 10 bytes
            b"\x0c",  # the end of a group that never started
            b"\x1a\x80\x80\x80\x80\x10",  # field 3 (request_id) claiming 4 GiB
        ]
    )


def _wrong_wire_type(workload: Workload, rng: random.Random) -> bytes:
    """A ``RecommendRequest`` with a valid history whose ``n`` (an int32 varint) is sent as a string.

    Protobuf keeps a field of the wrong wire type as an unknown field, so the server sees ``n`` unset (0).
    """
    history = pb.RecommendRequest(history=_history(workload, rng)).SerializeToString()
    return history + b"\x12\x06twenty"


def request_kinds() -> list[RequestKind]:
    """Every kind of request the drill sends, valid ones first."""
    ok = frozenset({"OK"})
    invalid = frozenset({"INVALID_ARGUMENT"})

    def recommend(w: Workload, rng: random.Random, rid: str) -> Request:
        return _recommend(w, _history(w, rng), _n(w, rng), rid, True)

    def recommend_batch(w: Workload, rng: random.Random, rid: str) -> Request:
        histories = [_history(w, rng) for _ in range(rng.randint(1, MAX_VALID_ROWS))]
        return _batch(w, histories, _n(w, rng), rid, True)

    def recommend_for_users(w: Workload, rng: random.Random, rid: str) -> Request:
        users = [rng.randrange(len(w.stored)) for _ in range(rng.randint(1, MAX_VALID_ROWS))]
        return _for_users(w, users, _n(w, rng), rid, True)

    def empty_history(w: Workload, rng: random.Random, rid: str) -> Request:
        if rng.random() < 0.5:
            return _recommend(w, [], _n(w, rng), rid, False)
        return _batch(w, [_history(w, rng), []], _n(w, rng), rid, False)

    def long_history(w: Workload, rng: random.Random, rid: str) -> Request:
        history = _items(w, rng, w.info.max_history + rng.randint(1, 50))
        return _recommend(w, history, _n(w, rng), rid, False)

    def unknown_item(w: Workload, rng: random.Random, rid: str) -> Request:
        history = _history(w, rng)
        history[rng.randrange(len(history))] = rng.choice(
            [0, w.info.num_items + rng.randint(1, 10**6), 2**62]
        )
        return _batch(w, [_history(w, rng), history], _n(w, rng), rid, False)

    def negative_item(w: Workload, rng: random.Random, rid: str) -> Request:
        history = _history(w, rng)
        history[rng.randrange(len(history))] = -rng.choice([1, rng.randint(2, 10**9), 2**63 - 1])
        return _recommend(w, history, _n(w, rng), rid, False)

    def n_zero(w: Workload, rng: random.Random, rid: str) -> Request:
        return _batch(w, [_history(w, rng)], _bad_n(w, rng, "zero"), rid, False)

    def n_negative(w: Workload, rng: random.Random, rid: str) -> Request:
        return _recommend(w, _history(w, rng), _bad_n(w, rng, "negative"), rid, False)

    def n_over_max(w: Workload, rng: random.Random, rid: str) -> Request:
        return _for_users(w, [rng.randrange(len(w.stored))], _bad_n(w, rng, "over"), rid, False)

    def unknown_user(w: Workload, rng: random.Random, rid: str) -> Request:
        bad = rng.choice([len(w.stored) + rng.randint(0, 10**6), -rng.randint(1, 10**6), 2**63 - 1])
        return _for_users(w, [rng.randrange(len(w.stored)), bad], _n(w, rng), rid, False)

    def oversized_batch(w: Workload, rng: random.Random, rid: str) -> Request:
        count = w.info.max_batch + rng.randint(1, 16)
        if rng.random() < 0.5:
            return _batch(w, [[1 + k % w.info.num_items] for k in range(count)], _n(w, rng), rid, False)
        return _for_users(w, [k % len(w.stored) for k in range(count)], _n(w, rng), rid, False)

    def long_request_id(w: Workload, rng: random.Random, rid: str) -> Request:
        long_id = rid + "x" * rng.randint(129, 10_000)
        return _recommend(w, _history(w, rng), _n(w, rng), long_id, False)

    def big_payload(w: Workload, rng: random.Random, rid: str) -> Request:
        return Request("RecommendBatch", w.big_payload, _auth(w), w.timeout)

    def undecodable(w: Workload, rng: random.Random, rid: str) -> Request:
        return Request(rng.choice(METHODS), _undecodable(rng), _auth(w), w.timeout)

    def wrong_wire_type(w: Workload, rng: random.Random, rid: str) -> Request:
        return Request("Recommend", _wrong_wire_type(w, rng), _auth(w), w.timeout)

    def bad_token(w: Workload, rng: random.Random, rid: str) -> Request:
        metadata = rng.choice(
            [
                (("authorization", f"Bearer {w.token}x"),),
                (("authorization", "Bearer "),),
                (("authorization", w.token),),  # no "Bearer " scheme
                (("authorization", f"Bearer {w.token}"), ("authorization", f"Bearer {w.token}")),
                (),  # no token at all
            ]
        )
        return _valid_request(w, rng, rid, metadata=metadata)

    def short_deadline(w: Workload, rng: random.Random, rid: str) -> Request:
        return _valid_request(w, rng, rid, timeout=rng.uniform(0.0001, 0.005))

    return [
        RequestKind("recommend", True, ok, recommend),
        RequestKind("recommend_batch", True, ok, recommend_batch),
        RequestKind("recommend_for_users", True, ok, recommend_for_users),
        RequestKind("empty_history", False, invalid, empty_history),
        RequestKind("long_history", False, invalid, long_history),
        RequestKind("unknown_item", False, invalid, unknown_item),
        RequestKind("negative_item", False, invalid, negative_item),
        RequestKind("n_zero", False, invalid, n_zero),
        RequestKind("n_negative", False, invalid, n_negative),
        RequestKind("n_over_max", False, invalid, n_over_max),
        RequestKind("unknown_user", False, invalid, unknown_user),
        RequestKind("oversized_batch", False, invalid, oversized_batch),
        RequestKind("long_request_id", False, invalid, long_request_id),
        # gRPC refuses a message over the server's receive limit before the service sees it; sent less often,
        # as every one moves several MiB.
        RequestKind(
            "big_payload",
            False,
            frozenset({"RESOURCE_EXHAUSTED"}),
            big_payload,
            server_counts=NEVER,
            weight=0.25,
        ),
        # The service decodes requests itself (lsc4rec/serving/decoding.py): undecodable bytes are refused
        # INVALID_ARGUMENT and counted like any other refusal.
        RequestKind("undecodable", False, invalid, undecodable),
        RequestKind("wrong_wire_type", False, invalid, wrong_wire_type),
        # The auth interceptor counts each refusal under the method called.
        RequestKind("bad_token", False, frozenset({"UNAUTHENTICATED"}), bad_token),
        # A valid request with a deadline of 0.1-5 ms: answered in time or not; either way a reply is checked.
        RequestKind(
            "short_deadline",
            False,
            frozenset({"OK", "DEADLINE_EXCEEDED"}),
            short_deadline,
            server_counts=AT_MOST,
        ),
    ]


def oversized_payload(target_bytes: int, workload_items: int, max_history: int) -> bytes:
    """A serialized ``RecommendBatchRequest`` of at least ``target_bytes`` (full-length histories)."""
    history = pb.History(items=[1 + k % workload_items for k in range(max_history)])
    one = len(pb.RecommendBatchRequest(histories=[history]).SerializeToString())
    message = pb.RecommendBatchRequest(histories=[history] * (target_bytes // max(one, 1) + 1), n=10)
    return message.SerializeToString()


# ---------------------------------------------------------------------- the tally
@dataclass
class Tally:
    """Everything the clients saw, shared by all client threads (every change under ``lock``)."""

    started: float = field(default_factory=time.perf_counter)
    #: (kind, method) -> status code name -> calls
    codes: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    calls: int = 0
    unexpected: int = 0
    #: RESOURCE_EXHAUSTED answers to valid requests (admission control refusing work); also unexpected.
    admission_refusals: int = 0
    #: OK replies to requests with a known answer contract (valid kinds, short deadlines answered in time).
    replies_owed_a_check: int = 0
    replies_checked: int = 0
    rows_checked: int = 0
    #: Rows breaking the candidate contract plus replies of the wrong shape.
    contract_violations: int = 0
    #: Latency in seconds of every OK reply to a valid-kind request.
    valid_latencies: list[float] = field(default_factory=list)
    #: Calls finished per whole second since ``started``.
    per_second: Counter[int] = field(default_factory=Counter)
    #: Client threads that died of an exception outside a call (a bug of the drill; fails the verdict).
    client_crashes: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, kind: RequestKind, request: Request, outcome: Outcome) -> None:
        """Count one finished call; an unexpected status or a broken reply keeps an example."""
        unexpected = outcome.code not in kind.expected
        with self.lock:
            self.calls += 1
            self.codes.setdefault((kind.name, request.method), Counter())[outcome.code] += 1
            self.per_second[int(time.perf_counter() - self.started)] += 1
            if unexpected:
                self.unexpected += 1
                if kind.valid and outcome.code == "RESOURCE_EXHAUSTED":
                    self.admission_refusals += 1
            if kind.valid and outcome.code == "OK":
                self.valid_latencies.append(outcome.latency)
            if outcome.code == "OK" and request.rows is not None:
                self.replies_owed_a_check += 1
            if outcome.checked_rows is not None:
                self.replies_checked += 1
                self.rows_checked += outcome.checked_rows
            self.contract_violations += outcome.violations
            if (unexpected or outcome.violations) and len(self.examples) < KEPT_EXAMPLES:
                self.examples.append(
                    {
                        "kind": kind.name,
                        "method": request.method,
                        "code": outcome.code,
                        "details": outcome.details[:300],
                        "problems": outcome.problems[:5],
                    }
                )

    def by_kind(self) -> dict[str, dict[str, int]]:
        """Calls per kind and status code."""
        with self.lock:
            merged: dict[str, Counter[str]] = {}
            for (kind, _), counts in self.codes.items():
                merged.setdefault(kind, Counter()).update(counts)
        return {kind: dict(sorted(counts.items())) for kind, counts in sorted(merged.items())}

    def crashed(self, message: str) -> None:
        """Record a client thread that died outside a call."""
        with self.lock:
            self.client_crashes.append(message)


@dataclass(frozen=True)
class Outcome:
    """How one call ended: status code name, latency, and for a checked reply its rows and problems."""

    code: str
    latency: float
    details: str = ""
    #: Rows checked against the contract (None: the reply was not checked).
    checked_rows: int | None = None
    violations: int = 0
    problems: list[str] = field(default_factory=list)


def reply_problems(request: Request, data: bytes, info: CandidateServiceInfo) -> tuple[int, list[str]]:
    """Rows of an OK reply that break the candidate contract (:func:`check_reply`) and the reply's structural
    problems (wrong number of rows or candidates, request id not echoed, ids outside the catalogue, an empty
    slot before a filled one, another catalogue or model)."""
    assert request.rows is not None
    problems: list[str] = []
    try:
        if request.method == "Recommend":
            rows = [pb.RecommendReply.FromString(data)]
        else:
            batch = pb.RecommendBatchReply.FromString(data)
            rows = list(batch.replies)
            if batch.request_id != request.request_id:
                problems.append(f"batch request_id {batch.request_id!r}, sent {request.request_id!r}")
    except Exception as error:  # a reply that does not parse is a broken reply, not a crash of the drill
        return 0, [f"reply does not parse: {type(error).__name__}: {error}"]
    if len(rows) != len(request.rows):
        return 0, [*problems, f"{len(rows)} replies for {len(request.rows)} rows"]
    for index, row in enumerate(rows):
        if len(row.items) != request.n or len(row.scores) != request.n:
            problems.append(
                f"row {index}: {len(row.items)} items, {len(row.scores)} scores for n = {request.n}"
            )
        if row.request_id != request.request_id:
            problems.append(f"row {index}: request_id {row.request_id!r}, sent {request.request_id!r}")
        if row.num_items != info.num_items or row.model_version != info.model_version:
            problems.append(f"row {index}: catalogue {row.num_items} / model {row.model_version!r}")
    if problems:
        return 0, problems
    items = np.array([list(row.items) for row in rows], dtype=np.int64).reshape(len(rows), request.n)
    scores = np.array([list(row.scores) for row in rows], dtype=np.float32).reshape(len(rows), request.n)
    if ((items < 0) | (items > info.num_items)).any():
        problems.append(f"item ids outside 0..{info.num_items}")
    # check_reply reads the filled slots as a prefix: an empty slot (0) must never precede a filled one.
    filled = items > 0
    if (filled[:, 1:] & ~filled[:, :-1]).any():
        problems.append("an empty slot before a filled one")
    return check_reply(CandidateList(items, scores), request.rows, request.n), problems


def send(
    calls: dict[str, grpc.UnaryUnaryMultiCallable], request: Request, info: CandidateServiceInfo
) -> Outcome:
    """Make one call and classify how it ended; an OK reply to a request with a contract is checked."""
    sent = time.perf_counter()
    try:
        data = calls[request.method](request.payload, timeout=request.timeout, metadata=request.metadata)
    except grpc.RpcError as error:
        latency = time.perf_counter() - sent
        if isinstance(error, grpc.Call):
            return Outcome(error.code().name, latency, error.details() or "")
        return Outcome("RPC_ERROR_WITHOUT_STATUS", latency, repr(error))
    except Exception as error:  # anything but a gRPC status is unexpected, whatever the kind
        return Outcome(f"EXCEPTION:{type(error).__name__}", time.perf_counter() - sent, str(error))
    latency = time.perf_counter() - sent
    if request.rows is None:
        return Outcome("OK", latency)
    bad_rows, problems = reply_problems(request, data, info)
    return Outcome("OK", latency, "", len(request.rows), bad_rows + len(problems), problems)


def _raw(data: bytes) -> bytes:
    return data


def open_calls(channel: grpc.Channel) -> dict[str, grpc.UnaryUnaryMultiCallable]:
    """Raw-bytes callables for every method the drill uses (requests are serialized by the kinds, so
    undecodable bytes can be sent as well; replies are parsed by :func:`reply_problems`)."""
    return {
        method: channel.unary_unary(
            f"/{SERVICE}/{method}", request_serializer=_raw, response_deserializer=_raw
        )
        for method in METHODS
    }


def kind_weights(kinds: Sequence[RequestKind], invalid_share: float) -> list[float]:
    """Draw weights: the valid kinds share ``1 - invalid_share``, the invalid ones ``invalid_share``, each
    group in proportion to the kinds' own weights."""
    totals = {
        valid: sum(kind.weight for kind in kinds if kind.valid == valid) or 1.0 for valid in (True, False)
    }
    share = {True: 1.0 - invalid_share, False: invalid_share}
    return [share[kind.valid] * kind.weight / totals[kind.valid] for kind in kinds]


def client_loop(
    index: int,
    target: str,
    workload: Workload,
    kinds: Sequence[RequestKind],
    weights: Sequence[float],
    seed: int,
    start: threading.Barrier,
    stop: threading.Event,
    tally: Tally,
) -> None:
    """One client: its own channel, a seeded stream of request kinds, until ``stop`` is set."""
    rng = random.Random(seed * 1_000_003 + index)
    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", MAX_REPLY_BYTES)])
    try:
        calls = open_calls(channel)
        start.wait()
        sequence = 0
        while not stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            request = kind.build(workload, rng, f"c{index}-{sequence}")
            sequence += 1
            tally.record(kind, request, send(calls, request, workload.info))
    except threading.BrokenBarrierError:
        tally.crashed(f"client {index}: the start barrier broke")
    except Exception as error:  # keep the other clients running; the verdict fails on any crash
        logger.exception("client %d crashed", index)
        tally.crashed(f"client {index}: {type(error).__name__}: {error}")
        start.abort()
    finally:
        channel.close()


@dataclass
class LoadRun:
    """One drill's raw results: the tally, the per-second samples and the wall time of the load."""

    tally: Tally
    #: One per second: seconds since the start, server RSS (MiB, None if unreadable), calls and unexpected so
    #: far.
    samples: list[dict[str, Any]]
    wall_s: float
    kinds: list[RequestKind]


def run_load(
    target: str,
    workload: Workload,
    *,
    clients: int,
    seconds: float,
    invalid_share: float,
    seed: int,
    server_pid: int,
    kinds: Sequence[RequestKind] | None = None,
    progress_every: float = 10.0,
) -> LoadRun:
    """Run ``clients`` client threads for ``seconds`` against ``target``, sampling the server's memory every
    second (and logging progress every ``progress_every`` seconds)."""
    kinds = list(request_kinds() if kinds is None else kinds)
    weights = kind_weights(kinds, invalid_share)
    tally = Tally()
    start = threading.Barrier(clients + 1)
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=client_loop,
            args=(i, target, workload, kinds, weights, seed, start, stop, tally),
            name=f"load-client-{i}",
            daemon=True,
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    samples: list[dict[str, Any]] = []
    try:
        start.wait()
    except threading.BrokenBarrierError:
        stop.set()
    began = time.perf_counter()
    tally.started = began
    next_log = progress_every
    while not stop.is_set():
        elapsed = time.perf_counter() - began
        rss = process_memory_mib(server_pid)
        with tally.lock:
            calls, unexpected = tally.calls, tally.unexpected
        samples.append({"t": round(elapsed, 2), "rss_mib": rss, "calls": calls, "unexpected": unexpected})
        if elapsed >= next_log:
            logger.info(
                "t=%3.0f s: %d calls (%.0f/s), %d unexpected, server RSS %s MiB",
                elapsed,
                calls,
                calls / elapsed,
                unexpected,
                "?" if rss is None else f"{rss:.1f}",
            )
            next_log += progress_every
        if elapsed >= seconds:
            break
        # Sample on whole seconds since the start, whatever the time the sampling itself took.
        stop.wait(max(0.0, len(samples) - (time.perf_counter() - began)))
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return LoadRun(tally, samples, wall, kinds)


# ---------------------------------------------------------------------- verdicts
def summarize(run: LoadRun) -> dict[str, Any]:
    """Per-kind counts by status, unexpected errors, rates, valid latency quantiles, reply checks."""
    tally = run.tally
    latencies_ms = np.asarray(tally.valid_latencies) * 1000.0
    with tally.lock:
        per_second = [tally.per_second.get(second, 0) for second in range(int(run.wall_s) + 1)]
    return {
        "calls": tally.calls,
        "wall_s": round(run.wall_s, 2),
        "requests_per_s": round(tally.calls / run.wall_s, 1) if run.wall_s > 0 else None,
        "per_kind": tally.by_kind(),
        "expected_codes": {kind.name: sorted(kind.expected) for kind in run.kinds},
        "unexpected_errors": tally.unexpected,
        "admission_refusals_of_valid_requests": tally.admission_refusals,
        "client_crashes": tally.client_crashes,
        "replies_owed_a_check": tally.replies_owed_a_check,
        "replies_checked": tally.replies_checked,
        "rows_checked": tally.rows_checked,
        "contract_violations": tally.contract_violations,
        "valid_latency_ms": {
            "count": int(latencies_ms.size),
            "p50": round(float(np.percentile(latencies_ms, 50)), 2) if latencies_ms.size else None,
            "p99": round(float(np.percentile(latencies_ms, 99)), 2) if latencies_ms.size else None,
            "max": round(float(latencies_ms.max()), 2) if latencies_ms.size else None,
        },
        "calls_per_second": per_second,
        "unexpected_examples": tally.examples,
    }


def memory_verdict(
    samples: Sequence[dict[str, Any]], threshold_mib: float, threshold_pct: float
) -> dict[str, Any]:
    """Whether the server's RSS stayed bounded: the highest sample of the last third of the run at most
    ``max(threshold_mib, threshold_pct % of the baseline)`` above the baseline, the sample at the end of the
    first third (start-up and the first connections are behind it by then). ``bounded`` is None without
    samples."""
    points = [(float(s["t"]), float(s["rss_mib"])) for s in samples if s.get("rss_mib") is not None]
    if len(points) < 3:
        return {"bounded": None, "reason": "fewer than 3 RSS samples (no /proc?)", "samples": len(points)}
    times = np.array([t for t, _ in points])
    rss = np.array([r for _, r in points])
    duration = times[-1]
    baseline = float(rss[times <= duration / 3][-1])
    last_third = rss[times >= 2 * duration / 3]
    growth = float(last_third.max()) - baseline
    allowed = max(threshold_mib, threshold_pct / 100.0 * baseline)
    later = times >= duration / 3
    slope = float(np.polyfit(times[later], rss[later], 1)[0]) * 60.0 if later.sum() >= 2 else 0.0
    return {
        "bounded": bool(growth <= allowed),
        "rule": "max RSS of the last third <= RSS at the end of the first third "
        f"+ max({threshold_mib:g} MiB, {threshold_pct:g} %)",
        "samples": len(points),
        "start_mib": round(float(rss[0]), 1),
        "baseline_mib": round(baseline, 1),
        "mid_mib": round(float(rss[np.argmin(np.abs(times - duration / 2))]), 1),
        "end_mib": round(float(rss[-1]), 1),
        "peak_mib": round(float(rss.max()), 1),
        "growth_last_third_mib": round(growth, 1),
        "allowed_growth_mib": round(allowed, 1),
        "slope_after_first_third_mib_per_min": round(slope, 2),
    }


def compare_with_server(run: LoadRun, server: MetricsSnapshot) -> dict[str, Any]:
    """Compare the server's per-method, per-status counters (the run's difference) with what the clients saw.

    Kinds the server counts EXACT add their client-side counts to what the server must show; NEVER kinds add
    nothing (gRPC answered them before the service's code ran); of an AT_MOST kind (short deadline) the
    calls the client saw OK are exact (the server counts a call before it sends the reply), and each call
    the client saw time out may appear once as OK, DEADLINE_EXCEEDED or CANCELLED, or not at all.
    """
    with run.tally.lock:
        codes = {key: Counter(counts) for key, counts in run.tally.codes.items()}
    by_name = {kind.name: kind for kind in run.kinds}
    owed: Counter[tuple[str, str]] = Counter()
    slack: Counter[str] = Counter()
    never: Counter[str] = Counter()
    for (name, method), counts in codes.items():
        kind = by_name[name]
        for code, count in counts.items():
            if kind.server_counts == EXACT or (kind.server_counts == AT_MOST and code == "OK"):
                owed[(method, code)] += count
            elif kind.server_counts == AT_MOST:
                slack[method] += count
            else:
                never[name] += count
    mismatches: list[dict[str, Any]] = []
    per_method: dict[str, Any] = {}
    late_codes = ("OK", "DEADLINE_EXCEEDED", "CANCELLED")
    for method in METHODS:
        seen = dict(server.stats(method).codes)
        wanted = {code: count for (m, code), count in owed.items() if m == method}
        surplus = 0
        for code in sorted(set(seen) | set(wanted)):
            difference = seen.get(code, 0) - wanted.get(code, 0)
            if code in late_codes and difference > 0:
                surplus += difference
            elif difference:
                mismatches.append(
                    {
                        "method": method,
                        "code": code,
                        "clients": wanted.get(code, 0),
                        "server": seen.get(code, 0),
                    }
                )
        if surplus > slack[method]:
            mismatches.append(
                {
                    "method": method,
                    "code": "/".join(late_codes),
                    "problem": f"server counted {surplus} more than the clients saw, but only "
                    f"{slack[method]} short-deadline calls timed out on the client",
                }
            )
        per_method[method] = {
            "clients_expected_on_server": dict(sorted(wanted.items())),
            "server": dict(sorted(seen.items())),
            "short_deadline_timeouts_on_client": slack[method],
            "of_which_the_server_counted": surplus,
        }
    return {
        "matches": not mismatches,
        "mismatches": mismatches,
        "per_method": per_method,
        "never_reach_the_service": dict(sorted(never.items())),
    }


def settled_metrics(client: CandidateServiceClient, wait: float = 10.0) -> MetricsSnapshot:
    """The server's counters once no call is still being counted (two reads 0.5 s apart agree on every
    method but Metrics itself), or after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    last = client.metrics()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = client.metrics()
        if all(now.stats(m).codes == last.stats(m).codes for m in METHODS):
            return now
        last = now
    return last


def verdict(summary: dict[str, Any], memory: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """The drill's pass/fail: no unexpected error, no crashed client, memory bounded, every valid reply
    checked and none broken, and the server's counters agreeing with the clients'."""
    result = {
        "unexpected_errors": summary["unexpected_errors"] + len(summary["client_crashes"]),
        "memory_bounded": memory["bounded"],
        "replies_checked": summary["replies_checked"],
        "every_valid_reply_checked": summary["replies_checked"] == summary["replies_owed_a_check"],
        "contract_violations": summary["contract_violations"],
        "server_counts_match": server["matches"],
    }
    result["passed"] = bool(
        result["unexpected_errors"] == 0
        and result["memory_bounded"] is True
        and result["replies_checked"] > 0
        and result["every_valid_reply_checked"]
        and result["contract_violations"] == 0
        and result["server_counts_match"]
    )
    return result


# ---------------------------------------------------------------------- the service under test
def check_store(client: CandidateServiceClient, stored: Sequence[Sequence[int]], n: int = 10) -> None:
    """Make sure the server's store is the one the drill checks against: RecommendForUsers for a few users
    must answer what RecommendBatch answers for their stored histories (the popularity and LLM sources are
    deterministic). SystemExit otherwise."""
    users = sorted({0, len(stored) // 2, len(stored) - 1})
    from_store = client.recommend_for_users(users, n)
    uploaded = client.recommend([stored[u] for u in users], n)
    if not np.array_equal(from_store.items, uploaded.items):
        raise SystemExit(
            "the server's user-history store differs from the histories the drill checks against"
        )


_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$"
)


def server_log_summary(path: Path) -> dict[str, Any]:
    """The server's log: records by level, and ERROR records grouped by what they say (the method named in
    grpcio's messages left out). Refusals are WARNINGs; traceback lines belong to the record above them."""
    levels: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    with contextlib.suppress(OSError), path.open(errors="replace") as handle:
        for line in handle:
            match = _LOG_LINE.match(line)
            if match is None:
                continue
            levels[match["level"]] += 1
            if match["level"] in ("ERROR", "CRITICAL"):
                message = re.sub(r"\[/[\w./]+\]", "[method]", match["message"])
                errors[f"{match['logger']}: {message[:200]}"] += 1
    return {
        "path": str(path),
        "records_by_level": dict(sorted(levels.items())),
        "errors": dict(errors.most_common()),
    }


def plot(run: LoadRun, summary: dict[str, Any], path: Path, title: str) -> None:
    """Server RSS and requests/s over the run."""
    fig, (ax_rss, ax_rate) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    points = [(s["t"], s["rss_mib"]) for s in run.samples if s["rss_mib"] is not None]
    if points:
        ax_rss.plot(*zip(*points, strict=True), marker=".")
    ax_rss.set_ylabel("server RSS (MiB)")
    ax_rss.set_ylim(bottom=0)
    rates = summary["calls_per_second"]
    ax_rate.step(range(len(rates)), rates, where="post")
    ax_rate.set_ylabel("calls finished / s")
    ax_rate.set_xlabel("seconds since the start")
    ax_rate.set_ylim(bottom=0)
    for ax in (ax_rss, ax_rate):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", choices=["popularity", "llm"], default="popularity")
    parser.add_argument(
        "--llm-path", type=existing_dir, default=None, help="saved cloud LLM folder (--source llm)"
    )
    parser.add_argument("--llm-runtime", choices=["onnx", "torch"], default="onnx")
    parser.add_argument("--dataset", default="beauty", help="dataset name (embedded: beauty)")
    parser.add_argument("--data-path", default=None, help="data file/folder for a non-embedded dataset")
    parser.add_argument(
        "--max-history", type=positive_int, default=50, help="popularity source's max_history"
    )
    parser.add_argument(
        "--clients", type=positive_int, default=128, help="concurrent clients, one channel each"
    )
    parser.add_argument("--seconds", type=positive_float, default=60.0, help="how long the clients send")
    parser.add_argument(
        "--invalid-share", type=fraction, default=0.3, help="share of invalid requests (0..1)"
    )
    parser.add_argument(
        "--big-payload-mib", type=positive_float, default=4.0, help="size of the oversized request"
    )
    parser.add_argument("--server-workers", type=positive_int, default=8)
    parser.add_argument(
        "--batch-delay-ms", type=non_negative_float, default=None, help="service micro-batching (off)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="client deadline of every call but the short-deadline kind, seconds (a valid call past it is "
        "an unexpected DEADLINE_EXCEEDED)",
    )
    parser.add_argument("--memory-threshold-mib", type=non_negative_float, default=50.0)
    parser.add_argument("--memory-threshold-pct", type=non_negative_float, default=5.0)
    parser.add_argument("--seed", type=int, default=0, help="seeds every client's stream of requests")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args(argv)
    if args.source == "llm" and args.llm_path is None:
        parser.error("--source llm needs --llm-path DIR (a folder written by CloudLLM.save_pretrained)")
    if args.clients < 1 or args.seconds <= 0 or not 0.0 <= args.invalid_share <= 1.0:
        parser.error("--clients must be >= 1, --seconds > 0 and --invalid-share in 0..1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Start the service, run the drill, report; 0 when the verdict passes, 1 otherwise."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    split = load_split(args.dataset, args.data_path)
    token = secrets.token_urlsafe(24)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "candidate_service_load.server.log"
    log_path.unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    # Its own process always: the drill samples the server's memory, which must not include the clients'.
    server = ServerHandle(args, split, token, in_process=False, user_store=True, log_path=log_path)
    try:
        probe = CandidateServiceClient(server.target, token=token, timeout=args.timeout)
        if probe.health() != "SERVING":
            raise SystemExit("the candidate service's health check does not say SERVING")
        info = probe.info()
        stored = [history[-info.max_history :] for history in split.test_histories()]
        if max(max(h) for h in stored) > info.num_items:
            raise SystemExit(f"the service knows {info.num_items} items but {args.dataset} uses more")
        check_store(probe, stored)
        workload = Workload(
            histories=stored,
            stored=stored,
            info=info,
            token=token,
            timeout=args.timeout,
            big_payload=oversized_payload(
                int(args.big_payload_mib * (1 << 20)), info.num_items, info.max_history
            ),
        )
        memory_at_start = process_memory_mib(server.pid)
        before = probe.metrics()
        logger.info(
            "%d clients for %g s, %.0f %% invalid requests, against %s (pid %d, RSS %.1f MiB)",
            args.clients,
            args.seconds,
            100 * args.invalid_share,
            server.target,
            server.pid,
            memory_at_start or float("nan"),
        )
        run = run_load(
            server.target,
            workload,
            clients=args.clients,
            seconds=args.seconds,
            invalid_share=args.invalid_share,
            seed=args.seed,
            server_pid=server.pid,
        )
        during = settled_metrics(probe).since(before)
        server_peak = server.peak_memory_mb()
    finally:
        with contextlib.suppress(NameError):
            probe.close()
        server.stop()

    summary = summarize(run)
    memory = memory_verdict(run.samples, args.memory_threshold_mib, args.memory_threshold_pct)
    memory["server_peak_vmhwm_mib"] = None if server_peak is None else round(server_peak, 1)
    counts = compare_with_server(run, during)
    outcome = verdict(summary, memory, counts)
    payload = {
        "benchmark": "candidate_service_load",
        "source": args.source,
        "llm_path": args.llm_path,
        "dataset": args.dataset,
        "clients": args.clients,
        "seconds": args.seconds,
        "invalid_share": args.invalid_share,
        "seed": args.seed,
        "service": {
            "num_items": info.num_items,
            "max_history": info.max_history,
            "max_n": info.max_n,
            "max_batch": info.max_batch,
            "model_version": info.model_version,
            "server_workers": args.server_workers,
            "batch_delay_ms": args.batch_delay_ms,
            "users_in_store": len(stored),
            "big_payload_bytes": len(workload.big_payload),
            "client_timeout_s": args.timeout,
        },
        "machine": {"cpus": os.cpu_count(), "load_average_1min_before": round(load_before, 2)},
        "grpcio": grpc.__version__,
        "load": summary,
        "memory": {**memory, "samples": run.samples},
        "server_counters": {
            "comparison": counts,
            "summary": during.summary(),
        },
        "server_log": server_log_summary(log_path),
        "peak_memory_mb_client_process": round(peak_memory_mb(), 1),
        "verdict": outcome,
    }
    json_path = write_json(args.out / "candidate_service_load.json", payload)
    title = (
        f"candidate service load drill: {args.clients} clients, {args.invalid_share:.0%} invalid, "
        f"{args.source} source"
    )
    plot(run, summary, args.out / "candidate_service_load.png", title)
    logger.info("wrote %s and its plot; verdict %s", json_path, "PASSED" if outcome["passed"] else "FAILED")
    emit_result(
        {
            "benchmark": "candidate_service_load",
            "clients": args.clients,
            "seconds": args.seconds,
            "calls": summary["calls"],
            "requests_per_s": summary["requests_per_s"],
            "valid_p50_ms": summary["valid_latency_ms"]["p50"],
            "valid_p99_ms": summary["valid_latency_ms"]["p99"],
            "admission_refusals": summary["admission_refusals_of_valid_requests"],
            "server_rss_mib": {
                key: memory.get(f"{key}_mib") for key in ("start", "baseline", "mid", "end", "peak")
            },
            "server_counts_match": counts["matches"],
            "verdict": outcome,
        }
    )
    return 0 if outcome["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
