"""The cloud's candidate service: any :class:`CandidateSource` served over gRPC.

Devices (through :class:`lsc4rec.client.collab.candidate_client.CandidateServiceClient`) send interaction
histories and get the cloud model's top-``n`` candidates back. The service checks every request against the
source's catalogue and limits (``INVALID_ARGUMENT`` naming the offending field and value), can require a
bearer token (``authorization: Bearer <token>`` metadata, checked by :class:`TokenAuthInterceptor` →
``UNAUTHENTICATED``) and can serve over TLS (:class:`TLSConfig`). Every refused request is logged with its
reason.

    with serve(source, token="s3cret") as service:
        print(service.target)   # "127.0.0.1:<bound port>"
        service.wait()          # block until stopped (Ctrl-C in a script)
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import grpc
import numpy as np
import torch

from lsc4rec.models.llm.candidates import CandidateList, CandidateSource
from lsc4rec.proto import candidate_service_pb2 as pb
from lsc4rec.proto import candidate_service_pb2_grpc as pb_grpc
from lsc4rec.server.micro_batching import MicroBatcher, QueueFull

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_N",
    "MAX_REQUEST_ID",
    "CandidateServicer",
    "RunningService",
    "TLSConfig",
    "TokenAuthInterceptor",
    "serve",
]

logger = logging.getLogger(__name__)

#: Largest ``n`` a request may ask for unless the service is configured otherwise.
DEFAULT_MAX_N = 100
#: Most histories one ``RecommendBatch`` call may carry unless configured otherwise.
DEFAULT_MAX_BATCH = 1024
#: Longest ``request_id`` (characters): it is echoed in every reply of a batch and written to the logs.
MAX_REQUEST_ID = 128

# Wire-size bounds used to derive the gRPC message limits: an int64 varint takes at most 10 bytes (negative
# ids take all 10, and those must still reach validation to get a precise error); a float takes 4.
_MAX_VARINT_BYTES = 10
_FLOAT_BYTES = 4
# Tags, length prefixes, n, request_id (up to 4 bytes per character) and the other small fields, per
# history/reply and per message.
_PER_ENTRY_OVERHEAD = 64 + 4 * MAX_REQUEST_ID
_PER_MESSAGE_OVERHEAD = 4096
_MIN_MESSAGE_LIMIT = 1 << 20
#: Users per ``position_candidates`` call when the source does not say (``CloudLLM.batch_size`` does).
_DEFAULT_POSITION_BATCH = 256


def _message_limit(entries: int, bytes_per_entry: int, payload: int = 0) -> int:
    """A message limit twice the largest valid message, so a slightly bad request still gets a precise
    ``INVALID_ARGUMENT`` instead of gRPC's generic ``RESOURCE_EXHAUSTED``, but never below 1 MiB.

    The largest message has ``entries`` entries of ``bytes_per_entry`` each plus ``payload`` bytes shared
    among them (e.g. a bound on all the ids of a reply together).
    """
    largest = entries * (bytes_per_entry + _PER_ENTRY_OVERHEAD) + payload + _PER_MESSAGE_OVERHEAD
    return max(_MIN_MESSAGE_LIMIT, 2 * largest)


def _stored_histories(
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


def _history_problem(history: Sequence[int], field: str, num_items: int, max_history: int) -> str | None:
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
_BUSY = "deadline expired while waiting for the model (service busy)"


def _checked(result: CandidateList, rows: int, n: int) -> CandidateList:
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


def _request_id_problem(request_id: str) -> str | None:
    """Why ``request_id`` is not acceptable (too long to echo and log), or None."""
    if len(request_id) > MAX_REQUEST_ID:
        return f"request_id has {len(request_id)} characters, more than {MAX_REQUEST_ID}"
    return None


class CandidateServicer(pb_grpc.CandidateServiceServicer):
    """gRPC servicer that validates requests and answers them with a wrapped :class:`CandidateSource`.

    The source's ``num_items`` and ``max_history`` are read once, at construction: they are the contract the
    service advertises through ``Info``. Calls into the source are serialised with a lock unless
    ``source_is_thread_safe`` (models keep per-call state and torch modules are not re-entrant in general),
    so concurrent requests never see each other's histories; a request whose deadline passes while it waits
    for the lock is dropped with ``DEADLINE_EXCEEDED`` instead of occupying the model for nothing.

    The per-user history store is an immutable snapshot that :meth:`update_user_histories` swaps whole:
    every request reads one snapshot once, so it never mixes two versions of the store.
    """

    def __init__(
        self,
        source: CandidateSource,
        *,
        max_n: int = DEFAULT_MAX_N,
        max_batch: int = DEFAULT_MAX_BATCH,
        model_version: str | None = None,
        source_is_thread_safe: bool = False,
        user_histories: Sequence[Sequence[int]] | None = None,
        batch_delay: float | None = None,
        max_queue: int = 1024,
    ) -> None:
        """Serve ``source``; ``model_version`` defaults to ``source.model_version`` or the source's class.

        ``batch_delay`` (seconds; None = off) answers concurrent ``Recommend``, ``RecommendBatch`` and
        ``RecommendForUsers`` calls in micro-batches (:class:`~lsc4rec.server.micro_batching.MicroBatcher`):
        a call waits at most ``batch_delay`` for others (0: only what queued while the model was busy), up
        to ``max_batch`` histories share one call of the source, and beyond ``max_queue`` waiting calls new
        ones are refused with ``RESOURCE_EXHAUSTED``.

        ``user_histories[u]`` is the cloud's copy of user ``u``'s history (internal ids 1..num_items, possibly
        empty), which ``RecommendForUsers`` and ``PositionCandidatesForUsers`` answer from; without it those
        rpcs are refused. ValueError names the first stored id that is not an item id.
        """
        if max_n < 1:
            raise ValueError(f"max_n = {max_n} must be >= 1")
        if max_batch < 1:
            raise ValueError(f"max_batch = {max_batch} must be >= 1")
        self.source = source
        self.num_items = int(source.num_items)
        self.max_history = int(source.max_history)
        if self.num_items < 1 or self.max_history < 1:
            raise ValueError(
                f"source {type(source).__name__} reports num_items = {self.num_items} and max_history = "
                f"{self.max_history}; both must be >= 1"
            )
        self.max_n = int(max_n)
        self.max_batch = int(max_batch)
        if model_version is None:
            model_version = str(getattr(source, "model_version", type(source).__name__))
        self.model_version = model_version
        self._lock: threading.Lock | None = None if source_is_thread_safe else threading.Lock()
        # Writers swap the snapshot under this lock; readers take the reference once per request (an
        # attribute read is atomic), so a request never waits for an update nor sees half of one.
        self._histories_lock = threading.Lock()
        self._user_histories: tuple[np.ndarray, ...] | None = (
            None
            if user_histories is None
            else _stored_histories(user_histories, self.num_items, self.max_history)
        )
        self.batcher = (
            MicroBatcher(self._recommend_batch, self.max_batch, batch_delay, max_queue)
            if batch_delay is not None
            else None
        )

    # ------------------------------------------------------------------ user-history store
    @property
    def user_histories(self) -> tuple[np.ndarray, ...] | None:
        """The stored per-user histories now served (each its last ``max_history`` items), or None."""
        return self._user_histories

    def update_user_histories(self, histories: Sequence[Sequence[int]]) -> None:
        """Replace the stored per-user histories (e.g. the cloud's view after a federated round).

        ``histories`` must have one entry per user, as many as the service was started with, each with item
        ids ``1..num_items`` (empty allowed). Requests already running finish on the old histories; every
        request that starts after this returns sees the new ones. Raises ValueError (and keeps the old store)
        when the service has no store or ``histories`` is invalid.
        """
        stored = _stored_histories(histories, self.num_items, self.max_history)
        with self._histories_lock:
            current = self._user_histories
            if current is None:
                raise ValueError(
                    "this candidate service was started without user_histories: there is no store to update"
                )
            if len(stored) != len(current):
                raise ValueError(
                    f"user_histories has {len(stored)} users, but the service stores {len(current)}: "
                    "an update must keep every user id (0..n-1)"
                )
            self._user_histories = stored
        logger.info("candidate service: user histories replaced (%d users)", len(stored))

    # ------------------------------------------------------------------ limits
    @property
    def max_request_bytes(self) -> int:
        """Largest request the server accepts (a full batch of the longest histories, with slack)."""
        return _message_limit(self.max_batch, self.max_history * _MAX_VARINT_BYTES)

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
        per_reply = self.max_n * (_MAX_VARINT_BYTES + _FLOAT_BYTES) + version
        positions = _message_limit(self.max_batch, 0, self.max_position_ids * _MAX_VARINT_BYTES + version)
        return max(_message_limit(self.max_batch, per_reply), positions)

    def info(self) -> pb.ServiceInfo:
        """The catalogue size and request limits this servicer enforces."""
        return pb.ServiceInfo(
            num_items=self.num_items,
            max_history=self.max_history,
            max_n=self.max_n,
            model_version=self.model_version,
            max_batch=self.max_batch,
            max_position_ids=self.max_position_ids,
        )

    # ------------------------------------------------------------------ rpcs
    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.ServiceInfo:
        """Catalogue size and limits; never touches the model."""
        return self.info()

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendReply:
        """Top-``n`` candidates for one history."""
        problem = (
            _request_id_problem(request.request_id)
            or self._n_problem(request.n)
            or _history_problem(request.history, "history", self.num_items, self.max_history)
        )
        if problem:
            _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, problem, "Recommend", request.request_id)
        histories = [list(request.history)]
        result = self._answer(histories, request.n, context, "Recommend", request.request_id)
        return self._reply(result, 0, request.request_id)

    def _answer(
        self, histories: list[list[int]], n: int, context: grpc.ServicerContext, method: str, request_id: str
    ) -> CandidateList:
        """Candidates for validated ``histories``: through the micro-batcher when it is on, else direct."""
        if self.batcher is None:
            return self._run_source(histories, n, context, method, request_id)
        return self._batched(histories, n, context, method, request_id)

    def _batched(
        self, histories: list[list[int]], n: int, context: grpc.ServicerContext, method: str, request_id: str
    ) -> CandidateList:
        """One call's histories through the micro-batcher; its own deadline, queue bound and errors."""
        assert self.batcher is not None
        remaining = context.time_remaining()
        try:
            future = self.batcher.submit(histories, n, remaining)
        except QueueFull as full:
            _refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"service busy: {full}", method, request_id)
        try:
            return future.result(timeout=remaining)
        except (TimeoutError, FutureTimeout):
            _refuse(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                _BUSY,
                method,
                request_id,
            )
        except Exception as error:
            logger.error("%s (request_id=%r): candidate source failed: %s", method, request_id, error)
            _abort(
                context, grpc.StatusCode.INTERNAL, f"candidate source failed: {type(error).__name__}: {error}"
            )

    def _recommend_batch(self, histories: list[list[int]], n: int) -> CandidateList:
        """The micro-batcher's call into the source: under the model lock, shape-checked, padded to ``n``."""
        if self._lock is None:
            result = self.source.recommend(histories, n)
        else:
            with self._lock:
                result = self.source.recommend(histories, n)
        return _checked(result, len(histories), n)

    def RecommendBatch(
        self, request: pb.RecommendBatchRequest, context: grpc.ServicerContext
    ) -> pb.RecommendBatchReply:
        """Top-``n`` candidates for every history of the request, in one call into the source."""
        problem = (
            _request_id_problem(request.request_id)
            or self._n_problem(request.n)
            or self._batch_problem(len(request.histories), "histories", "history")
        )
        if not problem:
            for index, history in enumerate(request.histories):
                problem = _history_problem(
                    history.items, f"histories[{index}].items", self.num_items, self.max_history
                )
                if problem:
                    break
        if problem:
            _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, problem, "RecommendBatch", request.request_id)
        histories = [list(history.items) for history in request.histories]
        result = self._answer(histories, request.n, context, "RecommendBatch", request.request_id)
        return self._batch_reply(result, request.request_id)

    def RecommendForUsers(
        self, request: pb.RecommendForUsersRequest, context: grpc.ServicerContext
    ) -> pb.RecommendBatchReply:
        """Top-``n`` candidates for users, from the cloud's stored, possibly stale histories."""
        method = "RecommendForUsers"
        stored = self._store_or_refuse(context, method, request.request_id)
        problem = (
            _request_id_problem(request.request_id)
            or self._n_problem(request.n)
            or self._batch_problem(len(request.user_ids), "user_ids", "user")
            or _user_problem(request.user_ids, len(stored))
        )
        if problem:
            _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, problem, method, request.request_id)
        # The store keeps each user's most recent max_history items (a long history is cut, not refused).
        histories = [stored[u].tolist() for u in request.user_ids]
        result = self._answer(histories, request.n, context, method, request.request_id)
        return self._batch_reply(result, request.request_id)

    def PositionCandidatesForUsers(
        self, request: pb.PositionCandidatesForUsersRequest, context: grpc.ServicerContext
    ) -> pb.PositionCandidatesForUsersReply:
        """The model's top-``k`` next items after every prefix of each user's stored history.

        Users are grouped by history length into model batches of the source's ``batch_size``, each
        left-padded to its longest history: one ``position_candidates`` call (one forward pass) per batch.
        """
        method = "PositionCandidatesForUsers"
        stored = self._store_or_refuse(context, method, request.request_id)
        unsupported = _position_source_problem(self.source)
        if unsupported:
            _refuse(context, grpc.StatusCode.UNIMPLEMENTED, unsupported, method, request.request_id)
        k = request.k
        problem = (
            _request_id_problem(request.request_id)
            or _range_problem("k", k, self.max_n)
            or self._batch_problem(len(request.user_ids), "user_ids", "user")
            or self._position_users_problem(len(request.user_ids), k)
            or _user_problem(request.user_ids, len(stored))
        )
        if problem:
            _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, problem, method, request.request_id)
        histories = [stored[u] for u in request.user_ids]
        candidates = self._position_candidates(histories, k, context, method, request.request_id)
        return pb.PositionCandidatesForUsersReply(
            users=[
                pb.UserPositionCandidates(
                    user_id=user, positions=int(rows.shape[0]), items=rows.reshape(-1).tolist()
                )
                for user, rows in zip(request.user_ids, candidates, strict=True)
            ],
            k=k,
            model_version=self.model_version,
            request_id=request.request_id,
        )

    # ------------------------------------------------------------------ helpers
    def _store_or_refuse(
        self, context: grpc.ServicerContext, method: str, request_id: str
    ) -> tuple[np.ndarray, ...]:
        """The current history snapshot (read once per request), or ``FAILED_PRECONDITION`` without one."""
        stored = self._user_histories
        if stored is None:
            _refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "this service has no user-history store; upload histories with RecommendBatch",
                method,
                request_id,
            )
        return stored

    def _position_users_problem(self, count: int, k: int) -> str | None:
        """Why ``count`` users are too many for one position reply at ``k`` (its size bound), or None."""
        limit = self.max_position_users(k)
        if count <= limit:
            return None
        return (
            f"user_ids has {count} entries, more than {limit} for k = {k} (max_position_ids = "
            f"{self.max_position_ids} over max_history = {self.max_history} positions of k ids per user)"
        )

    def _position_candidates(
        self,
        histories: list[np.ndarray],
        k: int,
        context: grpc.ServicerContext,
        method: str,
        request_id: str,
    ) -> list[np.ndarray]:
        """``[P_u, k]`` int64 candidates per history (``P_u`` = its length; 0 = empty slot), in order.

        Empty histories never reach the model. The others are sorted by length so each batch pads little,
        and the model lock is taken per batch, so other requests are not shut out for a whole large call.
        """
        out = [np.zeros((len(history), k), dtype=np.int64) for history in histories]
        order = sorted((i for i, h in enumerate(histories) if len(h)), key=lambda i: len(histories[i]))
        batch_size = max(1, int(getattr(self.source, "batch_size", _DEFAULT_POSITION_BATCH)))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(histories[i]) for i in rows)
            padded = np.zeros((len(rows), width), dtype=np.int64)
            for row, index in enumerate(rows):
                padded[row, width - len(histories[index]) :] = histories[index]
            with self._holding_model(context, method, request_id):
                top = self._call_position_candidates(torch.from_numpy(padded), k, context, method, request_id)
            if top.ndim != 3 or top.shape[:2] != padded.shape or top.shape[2] > k:
                message = (
                    f"position_candidates returned {tuple(top.shape)} for inputs {padded.shape} and k = {k} "
                    f"(expected [{len(rows)}, {width}, {k}])"
                )
                logger.error("%s (request_id=%r)", message, request_id)
                _abort(context, grpc.StatusCode.INTERNAL, message)
            # Left padding: a history of length n sits in the last n columns. A k above the catalogue size
            # leaves the extra columns 0 (empty slots).
            for row, index in enumerate(rows):
                length = len(histories[index])
                out[index][:, : top.shape[2]] = top[row, width - length :]
        return out

    def _call_position_candidates(
        self, inputs: torch.Tensor, k: int, context: grpc.ServicerContext, method: str, request_id: str
    ) -> np.ndarray:
        """``source.position_candidates`` as int64 numpy; a failure becomes ``INTERNAL`` (logged)."""
        # Not part of the CandidateSource protocol: _position_source_problem checked that the source has it.
        source: Any = self.source
        try:
            return np.asarray(source.position_candidates(inputs, k), dtype=np.int64)
        except Exception as error:
            logger.exception("%s (request_id=%r): position_candidates failed", method, request_id)
            message = f"position_candidates failed: {type(error).__name__}: {error}"
            _abort(context, grpc.StatusCode.INTERNAL, message)

    @contextmanager
    def _holding_model(self, context: grpc.ServicerContext, method: str, request_id: str) -> Iterator[None]:
        """Hold the model lock (unless the source is thread-safe) for the body; ``DEADLINE_EXCEEDED`` when
        the request's deadline passes while it waits."""
        if self._lock is None:
            yield
            return
        remaining = context.time_remaining()
        # time_remaining() is None when the client set no deadline: then wait as long as it takes.
        acquired = self._lock.acquire(timeout=-1 if remaining is None else max(remaining, 0.0))
        if not acquired:
            _refuse(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                _BUSY,
                method,
                request_id,
            )
        try:
            yield
        finally:
            self._lock.release()

    def _batch_problem(self, count: int, field: str, what: str) -> str | None:
        """Why a batch of ``count`` entries in ``field`` is refused (empty or over max_batch), or None."""
        if count == 0:
            return f"{field} is empty: at least one {what} is required"
        if count > self.max_batch:
            return f"{field} has {count} entries, more than max_batch = {self.max_batch}"
        return None

    def _batch_reply(self, result: CandidateList, request_id: str) -> pb.RecommendBatchReply:
        """Every row of ``result`` as one batch reply, in request order."""
        return pb.RecommendBatchReply(
            replies=[self._reply(result, row, request_id) for row in range(len(result))],
            request_id=request_id,
        )

    def _n_problem(self, n: int) -> str | None:
        """Why ``n`` is not acceptable, or None."""
        return _range_problem("n", n, self.max_n)

    def _run_source(
        self,
        histories: list[list[int]],
        n: int,
        context: grpc.ServicerContext,
        method: str,
        request_id: str,
    ) -> CandidateList:
        """Call the source (under the lock unless it is thread-safe) and check the shape of what it returns.

        Returns a CandidateList of exactly ``[len(histories), n]``: a source that fills fewer than ``n``
        columns is padded with empty slots, anything else malformed is an ``INTERNAL`` error.
        """
        with self._holding_model(context, method, request_id):
            result = self._call_source(histories, n, context, method, request_id)
        try:
            return _checked(result, len(histories), n)
        except ValueError as malformed:
            logger.error("%s (request_id=%r)", malformed, request_id)
            _abort(context, grpc.StatusCode.INTERNAL, str(malformed))

    def _call_source(
        self,
        histories: list[list[int]],
        n: int,
        context: grpc.ServicerContext,
        method: str,
        request_id: str,
    ) -> CandidateList:
        """``source.recommend``; a failure becomes ``INTERNAL`` (logged with its traceback)."""
        try:
            return self.source.recommend(histories, n)
        except Exception as error:
            logger.exception("%s (request_id=%r): candidate source failed", method, request_id)
            message = f"candidate source failed: {type(error).__name__}: {error}"
            _abort(context, grpc.StatusCode.INTERNAL, message)

    def _reply(self, result: CandidateList, row: int, request_id: str) -> pb.RecommendReply:
        """Row ``row`` of ``result`` as a reply message."""
        return pb.RecommendReply(
            items=result.items[row].tolist(),
            scores=result.scores[row].tolist(),
            num_items=self.num_items,
            model_version=self.model_version,
            request_id=request_id,
        )


def _range_problem(field: str, value: int, maximum: int) -> str | None:
    """Why ``field`` = ``value`` is outside ``1..maximum`` (a message naming both), or None. Proto3 sends an
    unset field as 0, hence the hint."""
    if 1 <= value <= maximum:
        return None
    hint = f" ({field} was not set?)" if value == 0 else ""
    return f"{field} = {value} is outside 1..{maximum}{hint}"


def _user_problem(user_ids: Sequence[int], known: int) -> str | None:
    """Why ``user_ids`` names a user outside the store's ``0..known-1``, or None."""
    bad = next((i for i, u in enumerate(user_ids) if not 0 <= u < known), None)
    if bad is None:
        return None
    return f"user_ids[{bad}] = {user_ids[bad]} is not a known user (0..{known - 1})"


def _position_source_problem(source: CandidateSource) -> str | None:
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


def _refuse(
    context: grpc.ServicerContext, code: grpc.StatusCode, reason: str, method: str, request_id: str = ""
) -> NoReturn:
    """Log a refused request with its reason, then end the RPC with ``code`` and ``reason`` as details."""
    logger.warning(
        "refused %s from %s (request_id=%r): %s: %s",
        method,
        context.peer(),
        request_id[:MAX_REQUEST_ID],  # a refused over-long id is logged cut short
        code.name,
        reason,
    )
    _abort(context, code, reason)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the RPC with ``code``; ``context.abort`` always raises but is not annotated ``NoReturn``."""
    context.abort(code, details)
    raise AssertionError("unreachable: grpc.ServicerContext.abort raises")


# ---------------------------------------------------------------------- authentication
class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses every call without ``authorization: Bearer <token>`` metadata with ``UNAUTHENTICATED``.

    The header is compared with :func:`hmac.compare_digest` (constant time, so response timing does not leak
    how much of a guess was right). The token itself is never logged.
    """

    def __init__(self, token: str) -> None:
        """Accept exactly ``token``; an empty token is an error (pass no interceptor to disable auth)."""
        if not token:
            raise ValueError("empty token: pass token=None to serve without authentication")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Pass authenticated calls on to the service; answer the others with ``UNAUTHENTICATED``."""
        values = [
            value
            for key, value in (handler_call_details.invocation_metadata or ())
            if key.lower() == "authorization"
        ]
        if not values:
            reason = "missing 'authorization: Bearer <token>' metadata"
        elif len(values) > 1:
            reason = f"{len(values)} authorization metadata entries; send exactly one"
        elif not hmac.compare_digest(_as_bytes(values[0]), self._expected):
            reason = "invalid token in the authorization metadata"
        else:
            return continuation(handler_call_details)
        return _unauthenticated_handler(handler_call_details.method, reason)


def _as_bytes(value: str | bytes) -> bytes:
    """Metadata values arrive as str (text keys) or bytes (``-bin`` keys)."""
    return value if isinstance(value, bytes) else value.encode()


def _unauthenticated_handler(method: str, reason: str) -> grpc.RpcMethodHandler:
    """A handler that logs the refusal and aborts; every rpc of this service is unary-unary."""

    def refuse(request: Any, context: grpc.ServicerContext) -> NoReturn:
        _refuse(context, grpc.StatusCode.UNAUTHENTICATED, reason, method)

    return grpc.unary_unary_rpc_method_handler(refuse)


# ---------------------------------------------------------------------- TLS
@dataclass(frozen=True)
class TLSConfig:
    """PEM files for serving over TLS: the server's certificate chain and its private key."""

    certificate_chain: Path | str
    private_key: Path | str

    def server_credentials(self) -> grpc.ServerCredentials:
        """Read both files into gRPC server credentials; clear errors for a missing or non-PEM file."""
        chain = _read_pem(self.certificate_chain, "certificate chain", "CERTIFICATE")
        key = _read_pem(self.private_key, "private key", "PRIVATE KEY")
        return grpc.ssl_server_credentials([(key, chain)])


def _read_pem(path: Path | str, what: str, marker: str) -> bytes:
    """Contents of PEM file ``path``; FileNotFoundError / ValueError say which TLS file is wrong and why."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"TLS {what} file not found: {file}")
    data = file.read_bytes()
    # gRPC only reports a bad PEM as a failed handshake at the first connection; check the framing here.
    if b"-----BEGIN " not in data or marker.encode() not in data:
        raise ValueError(f"TLS {what} file {file} is not PEM: no '-----BEGIN ...{marker}-----' block")
    return data


# ---------------------------------------------------------------------- running a server
class RunningService:
    """A started candidate service: where it listens, how to stop it, and a context manager that stops it."""

    def __init__(
        self, server: grpc.Server, servicer: CandidateServicer, host: str, port: int, tls: bool
    ) -> None:
        """Wrap an already started ``server``; use :func:`serve` to make one."""
        self.server = server
        self.servicer = servicer
        self.host = host
        self.port = port
        self.tls = tls

    @property
    def target(self) -> str:
        """``host:port`` to give a client (the bound port, also when the service was asked for port 0)."""
        return f"{self.host}:{self.port}"

    def update_user_histories(self, histories: Sequence[Sequence[int]]) -> None:
        """Replace the cloud's stored per-user histories (same users, ids 1..num_items) while serving.

        Thread-safe: ``RecommendForUsers`` and ``PositionCandidatesForUsers`` calls that start after this
        returns answer from ``histories``. ValueError (the old store kept) for a different number of users,
        an invalid item id, or a service started without ``user_histories``.
        """
        self.servicer.update_user_histories(histories)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let running ones finish for up to ``grace`` seconds, and wait until down."""
        self.server.stop(grace).wait()
        if self.servicer.batcher is not None:
            self.servicer.batcher.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout`` seconds pass); True when it has stopped."""
        return self.server.wait_for_termination(timeout)

    def __enter__(self) -> RunningService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop(grace=1.0)


def serve(
    source: CandidateSource,
    address: str = "127.0.0.1:0",
    token: str | None = None,
    tls: TLSConfig | None = None,
    max_workers: int = 8,
    *,
    max_n: int = DEFAULT_MAX_N,
    max_batch: int = DEFAULT_MAX_BATCH,
    model_version: str | None = None,
    source_is_thread_safe: bool = False,
    user_histories: Sequence[Sequence[int]] | None = None,
    batch_delay: float | None = None,
    max_queue: int = 1024,
) -> RunningService:
    """Start a candidate service for ``source`` on ``address`` (port 0 = any free port) and return it.

    ``token`` makes every call require ``authorization: Bearer <token>`` metadata; ``tls`` serves over TLS.
    ``max_workers`` threads handle calls (they queue for the model lock unless ``source_is_thread_safe``).
    Message limits follow from ``max_batch``, the source's ``max_history`` and ``max_n``; ``batch_delay`` and
    ``max_queue`` switch on micro-batching of ``Recommend`` (:class:`CandidateServicer`). Raises OSError when
    the address cannot be bound (in use, bad host), FileNotFoundError/ValueError for bad TLS files.
    """
    servicer = CandidateServicer(
        source,
        max_n=max_n,
        max_batch=max_batch,
        model_version=model_version,
        source_is_thread_safe=source_is_thread_safe,
        user_histories=user_histories,
        batch_delay=batch_delay,
        max_queue=max_queue,
    )
    credentials = tls.server_credentials() if tls is not None else None
    interceptors = [TokenAuthInterceptor(token)] if token is not None else []
    host, _, _ = address.rpartition(":")
    if not host:
        raise ValueError(f"address {address!r} must be host:port (port 0 picks a free port)")
    if token is not None and tls is None and host not in ("127.0.0.1", "localhost", "[::1]"):
        logger.warning("candidate service on %s has a token but no TLS: the token travels in clear", address)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="candidate-rpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", servicer.max_request_bytes),
            ("grpc.max_send_message_length", servicer.max_reply_bytes),
            # Without this a second server on a fixed port would silently share it with the first.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_CandidateServiceServicer_to_server(servicer, server)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:  # grpcio raises RuntimeError("Failed to bind to address ...")
        raise OSError(f"could not bind the candidate service to {address}: {error}") from error
    if port == 0:  # older grpcio signal a failed bind by returning port 0
        raise OSError(f"could not bind the candidate service to {address}")
    server.start()
    logger.info(
        "candidate service for %s (%d items, max_history %d, model %s) listening on %s:%d (%s, %s)",
        type(source).__name__,
        servicer.num_items,
        servicer.max_history,
        servicer.model_version,
        host,
        port,
        "TLS" if tls is not None else "plaintext",
        "token auth" if token is not None else "no auth",
    )
    return RunningService(server, servicer, host, port, tls is not None)
