"""What the candidate service admits: request checks with messages naming the field and value, the service's
limits and the message sizes derived from them, the bound on calls waiting for the model, the stored-history
snapshot, and the shape check of a reply.

Every ``*_problem`` function returns why its input is refused (a message for ``INVALID_ARGUMENT``), or None;
:func:`check` turns a problem into a :class:`Refused` call. :class:`ServiceLimits` is the contract the service
advertises through ``Info``; :class:`Admission` refuses calls beyond ``max_queue`` with ``RESOURCE_EXHAUSTED``
and ends a wait at the call's deadline with ``DEADLINE_EXCEEDED``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

import grpc
import grpc.aio
import numpy as np

from lsc4rec.models.llm.candidates import CandidateList, CandidateSource
from lsc4rec.serving.micro_batching import QueueFull

__all__ = [
    "BUSY",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_N",
    "DEFAULT_MAX_QUEUE",
    "FLOAT_BYTES",
    "MAX_REQUEST_ID",
    "MAX_VARINT_BYTES",
    "Admission",
    "Refused",
    "ServiceLimits",
    "check",
    "checked",
    "deadline_of",
    "history_problem",
    "message_limit",
    "position_source_problem",
    "range_problem",
    "request_id_problem",
    "stored_histories",
    "user_problem",
]

#: Largest ``n`` a request may ask for unless the service is configured otherwise.
DEFAULT_MAX_N = 100
#: Most histories one ``RecommendBatch`` call may carry unless configured otherwise.
DEFAULT_MAX_BATCH = 1024
#: Most calls waiting for or in the model at once unless configured otherwise; more are refused at once.
DEFAULT_MAX_QUEUE = 1024

#: Longest ``request_id`` (characters): it is echoed in every reply of a batch and written to the logs.
MAX_REQUEST_ID = 128

# Wire-size bounds used to derive the gRPC message limits: an int64 varint takes at most 10 bytes (negative
# ids take all 10, and those must still reach validation to get a precise error); a float takes 4.
MAX_VARINT_BYTES = 10
FLOAT_BYTES = 4
# Tags, length prefixes, n, request_id (up to 4 bytes per character) and the other small fields, per
# history/reply and per message.
_PER_ENTRY_OVERHEAD = 64 + 4 * MAX_REQUEST_ID
_PER_MESSAGE_OVERHEAD = 4096
_MIN_MESSAGE_LIMIT = 1 << 20

_T = TypeVar("_T")


class Refused(Exception):
    """Ends a call with ``code`` and ``reason`` (logged, counted, sent as the status details)."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def check(problem: str | None, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
    """Refuse the call with ``code`` (``INVALID_ARGUMENT`` by default) when a check found a ``problem``."""
    if problem:
        raise Refused(code, problem)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on ``time.monotonic()``'s clock (None when the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def message_limit(entries: int, bytes_per_entry: int, payload: int = 0) -> int:
    """A message limit twice the largest valid message, so a slightly bad request still gets a precise
    ``INVALID_ARGUMENT`` instead of gRPC's generic ``RESOURCE_EXHAUSTED``, but never below 1 MiB.

    The largest message has ``entries`` entries of ``bytes_per_entry`` each plus ``payload`` bytes shared
    among them (e.g. a bound on all the ids of a reply together).
    """
    largest = entries * (bytes_per_entry + _PER_ENTRY_OVERHEAD) + payload + _PER_MESSAGE_OVERHEAD
    return max(_MIN_MESSAGE_LIMIT, 2 * largest)


@dataclass(frozen=True)
class ServiceLimits:
    """The contract a service advertises through ``Info`` (catalogue size, request limits, model version)
    plus its queue bound, and the checks and message sizes that follow from it."""

    num_items: int
    max_history: int
    max_n: int
    max_batch: int
    max_queue: int
    model_version: str

    @classmethod
    def for_source(
        cls, source: CandidateSource, max_n: int, max_batch: int, max_queue: int, model_version: str | None
    ) -> ServiceLimits:
        """``source``'s ``num_items`` and ``max_history`` (read once) with the service's own limits;
        ``model_version`` defaults to ``source.model_version`` or the source's class. ValueError when the
        source reports a size below 1."""
        num_items = int(source.num_items)
        max_history = int(source.max_history)
        if num_items < 1 or max_history < 1:
            raise ValueError(
                f"source {type(source).__name__} reports num_items = {num_items} and max_history = "
                f"{max_history}; both must be >= 1"
            )
        if model_version is None:
            model_version = str(getattr(source, "model_version", type(source).__name__))
        return cls(num_items, max_history, int(max_n), int(max_batch), int(max_queue), model_version)

    @property
    def max_request_bytes(self) -> int:
        """Largest request the server accepts (a full batch of the longest histories, with slack)."""
        return message_limit(self.max_batch, self.max_history * MAX_VARINT_BYTES)

    @property
    def max_position_ids(self) -> int:
        """Most item ids one ``PositionCandidatesForUsers`` reply may carry, counting ``max_history``
        positions per user: as many as a full ``RecommendBatch`` reply, and always one user at ``max_n``."""
        return max(self.max_batch, self.max_history) * self.max_n

    def max_position_users(self, k: int) -> int:
        """Most users one ``PositionCandidatesForUsers`` call may ask for at ``k`` (1..max_n) per position."""
        return min(self.max_batch, self.max_position_ids // (self.max_history * max(k, 1)))

    @property
    def max_reply_bytes(self) -> int:
        """Largest reply the server sends (a full batch of ``max_n`` candidates each, or a full position
        reply of ``max_position_ids`` ids, with slack)."""
        version = len(self.model_version.encode())
        per_reply = self.max_n * (MAX_VARINT_BYTES + FLOAT_BYTES) + version
        # Each position id travels with its score.
        positions = message_limit(
            self.max_batch, 0, self.max_position_ids * (MAX_VARINT_BYTES + FLOAT_BYTES) + version
        )
        return max(message_limit(self.max_batch, per_reply), positions)

    def n_problem(self, n: int) -> str | None:
        """Why ``n`` is not acceptable, or None."""
        return range_problem("n", n, self.max_n)

    def batch_problem(self, count: int, field: str, what: str) -> str | None:
        """Why a batch of ``count`` entries in ``field`` is refused (empty or over max_batch), or None."""
        if count == 0:
            return f"{field} is empty: at least one {what} is required"
        if count > self.max_batch:
            return f"{field} has {count} entries, more than max_batch = {self.max_batch}"
        return None

    def position_users_problem(self, count: int, k: int) -> str | None:
        """Why ``count`` users are too many for one position reply at ``k`` (its size bound), or None."""
        limit = self.max_position_users(k)
        if count <= limit:
            return None
        return (
            f"user_ids has {count} entries, more than {limit} for k = {k} (max_position_ids = "
            f"{self.max_position_ids} over max_history = {self.max_history} positions of k ids per user)"
        )

    def history_problem(self, history: Sequence[int], field: str) -> str | None:
        """Why ``history`` (named ``field``) is not acceptable for this catalogue, or None."""
        return history_problem(history, field, self.num_items, self.max_history)


class Admission:
    """Admits at most ``max_queue`` calls to the model at once and waits for each one's work without a thread.

    Only the event-loop thread admits calls, so the count needs no lock.
    """

    def __init__(self, max_queue: int) -> None:
        """Refuse calls beyond ``max_queue`` waiting for or in the model."""
        self.max_queue = max_queue
        #: Calls admitted to the model (queued or running).
        self.in_flight = 0

    async def run(self, context: grpc.aio.ServicerContext, submit: Callable[[], Future[_T]]) -> _T:
        """Admit one call to the model (bounded), ``submit`` its work and wait for it without a thread.

        The wait ends at the call's deadline (``DEADLINE_EXCEEDED``); a cancelled call cancels its queued
        work, so it is never computed.
        """
        if self.in_flight >= self.max_queue:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"service busy: {self.in_flight} calls already waiting for the model (max_queue)",
            )
        self.in_flight += 1
        try:
            try:
                future = submit()
            except QueueFull as full:
                raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"service busy: {full}") from None
            try:
                return await asyncio.wait_for(asyncio.wrap_future(future), context.time_remaining())
            except TimeoutError:  # the wait's own timeout, or expired while queued (micro_batching)
                raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, BUSY) from None
        finally:
            self.in_flight -= 1


def stored_histories(
    histories: Sequence[Sequence[int]], num_items: int, max_history: int
) -> tuple[np.ndarray, ...]:
    """An immutable copy of per-user ``histories``: the last ``max_history`` items of each as int64.

    Only those items are ever read (longer stored histories are cut, not refused, as the cloud's own data),
    so nothing more is kept. Raises ValueError naming the first user and position whose id is not an item id
    (``1..num_items``); an empty history is allowed (the user has no stored interactions yet).
    """
    stored = []
    for user, history in enumerate(histories):
        ids = np.asarray(history, dtype=np.int64).reshape(-1)
        bad = np.flatnonzero((ids < 1) | (ids > num_items))
        if bad.size:
            first = int(bad[0])
            raise ValueError(
                f"user_histories[{user}][{first}] = {int(ids[first])} is not an item id "
                f"(valid ids are 1..{num_items})"
            )
        # A copy even when nothing is cut: the caller may go on mutating its own arrays.
        kept = ids[-max_history:].copy()
        kept.setflags(write=False)
        stored.append(kept)
    return tuple(stored)


def history_problem(history: Sequence[int], field: str, num_items: int, max_history: int) -> str | None:
    """Why ``history`` is not acceptable (a message naming ``field`` and the bad value), or None if it is."""
    if len(history) == 0:
        return f"{field} is empty: at least one item id is required"
    if len(history) > max_history:
        return f"{field} has {len(history)} items, more than max_history = {max_history}"
    ids = np.fromiter(history, dtype=np.int64, count=len(history))
    bad = np.flatnonzero((ids < 1) | (ids > num_items))
    if bad.size:
        first = int(bad[0])
        more = f" ({bad.size} unknown ids in total)" if bad.size > 1 else ""
        return f"{field}[{first}] = {int(ids[first])} is not an item id (valid ids are 1..{num_items}){more}"
    return None


#: Why a call that waited for the model past its deadline is refused (lock or micro-batch queue).
BUSY = "deadline expired while waiting for the model (service busy)"


def checked(result: CandidateList, rows: int, n: int) -> CandidateList:
    """``result`` as exactly ``[rows, n]``: fewer columns are padded with empty slots; anything else malformed
    is a ValueError naming the shapes."""
    items = np.asarray(result.items, dtype=np.int64)
    scores = np.asarray(result.scores, dtype=np.float32)
    if items.ndim != 2 or items.shape != scores.shape or items.shape[0] != rows or items.shape[1] > n:
        raise ValueError(
            f"candidate source returned items {items.shape} / scores {scores.shape} for {rows} histories "
            f"and n = {n} (expected [{rows}, {n}])"
        )
    if items.shape[1] < n:
        missing = n - items.shape[1]
        items = np.pad(items, ((0, 0), (0, missing)), constant_values=0)
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
    return CandidateList(items, scores)


def request_id_problem(request_id: str) -> str | None:
    """Why ``request_id`` is not acceptable (too long to echo and log), or None."""
    if len(request_id) > MAX_REQUEST_ID:
        return f"request_id has {len(request_id)} characters, more than {MAX_REQUEST_ID}"
    return None


def range_problem(field: str, value: int, maximum: int) -> str | None:
    """Why ``field`` = ``value`` is outside ``1..maximum`` (a message naming both), or None. Proto3 sends an
    unset field as 0, hence the hint."""
    if 1 <= value <= maximum:
        return None
    hint = f" ({field} was not set?)" if value == 0 else ""
    return f"{field} = {value} is outside 1..{maximum}{hint}"


def user_problem(user_ids: Sequence[int], known: int) -> str | None:
    """Why ``user_ids`` names a user outside the store's ``0..known-1``, or None."""
    bad = next((i for i, u in enumerate(user_ids) if not 0 <= u < known), None)
    if bad is None:
        return None
    return f"user_ids[{bad}] = {user_ids[bad]} is not a known user (0..{known - 1})"


def position_source_problem(source: CandidateSource) -> str | None:
    """Why ``source`` cannot answer ``PositionCandidatesForUsers``, or None.

    Duck-typed like the rest of the service (any source with ``position_candidates``); a
    :class:`~lsc4rec.models.llm.recommender.CloudLLM` also needs one token per item read as item tokens,
    which is checked here so the caller gets ``UNIMPLEMENTED`` rather than an ``INTERNAL`` from its
    ValueError.
    """
    name = type(source).__name__
    if not callable(getattr(source, "position_candidates", None)):
        return (
            f"the model behind this service ({name}) has no position_candidates: per-position candidates "
            "need the cloud LLM (CloudLLM)"
        )
    tokenizer = getattr(source, "tokenizer", None)
    if getattr(tokenizer, "depth", 1) != 1 or getattr(source, "prompt", None) is not None:
        return (
            f"the model behind this service ({name}) cannot score positions: position_candidates needs one "
            "token per item read as item tokens (llm.item_tokens=item, llm.history_format=items)"
        )
    return None
