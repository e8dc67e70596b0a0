"""The cloud's candidate service: any :class:`CandidateSource` served over gRPC, asynchronously.

Devices (through :class:`lsc4rec.client.collab.candidate_client.CandidateServiceClient`) send interaction
histories and get the cloud model's top-``n`` candidates back. The server runs on ``grpc.aio`` in its own
event-loop thread: a call waiting for the model holds no thread, only the model's work runs in threads. The
service checks every request against the source's catalogue and limits (``INVALID_ARGUMENT`` naming the
offending field and value), can require a bearer token and serve over TLS
(:mod:`lsc4rec.server.service_security`), micro-batches concurrent calls when asked
(:mod:`lsc4rec.server.micro_batching`), refuses calls beyond a bounded queue (``RESOURCE_EXHAUSTED``),
counts every call by method and status with a latency histogram (:meth:`RunningService.metrics`, the
``Metrics`` rpc) and answers the standard ``grpc.health.v1.Health`` checks. Every refused call is logged
with its reason.

    with serve(source, token="s3cret", batch_delay=0.0) as service:
        print(service.target)   # "127.0.0.1:<bound port>"
        service.wait()          # block until stopped (Ctrl-C in a script)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lsc4rec.models.llm.candidates import CandidateList, CandidateSource
from lsc4rec.proto import candidate_service_pb2 as pb
from lsc4rec.proto import candidate_service_pb2_grpc as pb_grpc
from lsc4rec.proto.service_metrics import MetricsSnapshot, ServiceMetrics, to_reply
from lsc4rec.server.candidate_checks import (
    BUSY,
    FLOAT_BYTES,
    MAX_REQUEST_ID,
    MAX_VARINT_BYTES,
    checked,
    history_problem,
    message_limit,
    position_source_problem,
    range_problem,
    request_id_problem,
    stored_histories,
    user_problem,
)
from lsc4rec.server.micro_batching import MicroBatcher, QueueFull
from lsc4rec.server.service_security import TLSConfig, TokenAuthInterceptor

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_N",
    "DEFAULT_MAX_QUEUE",
    "MAX_REQUEST_ID",
    "SERVICE_NAME",
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
#: Most calls waiting for or in the model at once unless configured otherwise; more are refused at once.
DEFAULT_MAX_QUEUE = 1024
#: The service's full gRPC name, as health checks name it.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CandidateService"].full_name
#: Users per ``position_candidates`` call when the source does not say (``CloudLLM.batch_size`` does).
_DEFAULT_POSITION_BATCH = 256

_T = TypeVar("_T")


class _Refused(Exception):
    """Ends a call with ``code`` and ``reason`` (logged, counted, sent as the status details)."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class CandidateServicer(pb_grpc.CandidateServiceServicer):
    """Asynchronous gRPC servicer that validates requests and answers them with a wrapped source.

    The source's ``num_items`` and ``max_history`` are read once, at construction: they are the contract the
    service advertises through ``Info``. The source runs in worker threads (``max_workers``), never on the
    event loop; calls into it are serialised with a lock unless ``source_is_thread_safe`` (models keep
    per-call state and torch modules are not re-entrant in general), so concurrent requests never see each
    other's histories. A call whose deadline passes while it waits is dropped with ``DEADLINE_EXCEEDED``
    instead of occupying the model for nothing; a client that cancels is dropped the same way.

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
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_workers: int = 8,
    ) -> None:
        """Serve ``source``; ``model_version`` defaults to ``source.model_version`` or the source's class.

        ``batch_delay`` (seconds; None = off) answers concurrent ``Recommend``, ``RecommendBatch`` and
        ``RecommendForUsers`` calls in micro-batches (:class:`~lsc4rec.server.micro_batching.MicroBatcher`):
        a call waits at most ``batch_delay`` for others (0: only what queued while the model was busy) and
        up to ``max_batch`` histories share one call of the source. Beyond ``max_queue`` calls waiting for or
        in the model, new ones are refused with ``RESOURCE_EXHAUSTED``. ``max_workers`` threads run the
        source's work outside the micro-batcher (more than one only helps a thread-safe source).

        ``user_histories[u]`` is the cloud's copy of user ``u``'s history (internal ids 1..num_items, possibly
        empty), which ``RecommendForUsers`` and ``PositionCandidatesForUsers`` answer from; without it those
        rpcs are refused. ValueError names the first stored id that is not an item id.
        """
        for name, value in (("max_n", max_n), ("max_batch", max_batch), ("max_queue", max_queue)):
            if value < 1:
                raise ValueError(f"{name} = {value} must be >= 1")
        if max_workers < 1:
            raise ValueError(f"max_workers = {max_workers} must be >= 1")
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
        self.max_queue = int(max_queue)
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
            else stored_histories(user_histories, self.num_items, self.max_history)
        )
        self.metrics = ServiceMetrics()
        # Calls admitted to the model (queued or running); only the event-loop thread changes it.
        self._in_flight = 0
        self._workers = ThreadPoolExecutor(max_workers, thread_name_prefix="candidate-model")
        self.batcher = (
            MicroBatcher(self._run_locked, self.max_batch, batch_delay, self.max_queue)
            if batch_delay is not None
            else None
        )

    def close(self) -> None:
        """Stop the micro-batcher and the worker threads (after the server stopped)."""
        if self.batcher is not None:
            self.batcher.close()
        self._workers.shutdown(wait=False, cancel_futures=True)

    def snapshot(self) -> MetricsSnapshot:
        """The service's counters now (:class:`~lsc4rec.server.service_metrics.MetricsSnapshot`)."""
        batching = (
            {}
            if self.batcher is None
            else {
                "batches": self.batcher.batches,
                "requests": self.batcher.requests,
                "rows": self.batcher.rows,
                "expired": self.batcher.expired,
            }
        )
        return self.metrics.snapshot(batching)

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
        stored = stored_histories(histories, self.num_items, self.max_history)
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
    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.ServiceInfo:
        """Catalogue size and limits; never touches the model."""
        return await self._call("Info", "", context, _ready(self.info()))

    async def Metrics(self, request: pb.MetricsRequest, context: grpc.aio.ServicerContext) -> pb.MetricsReply:
        """Per-method counters and latency histograms since the start; never touches the model."""
        return await self._call("Metrics", "", context, _ready(to_reply(self.snapshot())))

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendReply:
        """Top-``n`` candidates for one history."""
        return await self._call("Recommend", request.request_id, context, self._recommend(request, context))

    async def RecommendBatch(
        self, request: pb.RecommendBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchReply:
        """Top-``n`` candidates for every history of the request, in one call into the source."""
        work = self._recommend_batch(request, context)
        return await self._call("RecommendBatch", request.request_id, context, work)

    async def RecommendForUsers(
        self, request: pb.RecommendForUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchReply:
        """Top-``n`` candidates for users, from the cloud's stored, possibly stale histories."""
        work = self._recommend_for_users(request, context)
        return await self._call("RecommendForUsers", request.request_id, context, work)

    async def PositionCandidatesForUsers(
        self, request: pb.PositionCandidatesForUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb.PositionCandidatesForUsersReply:
        """The model's top-``k`` next items after every prefix of each user's stored history.

        Users are grouped by history length into model batches of the source's ``batch_size``, each
        left-padded to its longest history: one ``position_candidates`` call (one forward pass) per batch.
        """
        work = self._position_candidates_for_users(request, context)
        return await self._call("PositionCandidatesForUsers", request.request_id, context, work)

    # ------------------------------------------------------------------ one call, start to end
    async def _call(
        self, method: str, request_id: str, context: grpc.aio.ServicerContext, work: Awaitable[_T]
    ) -> _T:
        """Run one call's ``work``: a refusal is logged and sent as the call's status; every call is counted
        with its final status and latency."""
        started = time.perf_counter()
        code = "OK"
        try:
            return await work
        except _Refused as refused:
            code = refused.code.name
            _log_refusal(method, context, request_id, refused)
            if context.done():
                # The call already ended (its deadline passed as it was refused): there is nobody to answer,
                # and aborting a finished call makes gRPC log a false error.
                raise asyncio.CancelledError from None
            await context.abort(refused.code, refused.reason)
            raise AssertionError("unreachable: ServicerContext.abort raises") from None
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away or its deadline passed: nothing to answer
            raise
        except Exception:
            code = "UNKNOWN"
            logger.exception("%s (request_id=%r) failed", method, request_id[:MAX_REQUEST_ID])
            raise
        finally:
            self.metrics.record(method, code, time.perf_counter() - started)

    async def _recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendReply:
        _check(
            request_id_problem(request.request_id)
            or self._n_problem(request.n)
            or history_problem(request.history, "history", self.num_items, self.max_history)
        )
        result = await self._candidates([list(request.history)], request.n, context)
        return self._reply(result, 0, request.request_id)

    async def _recommend_batch(
        self, request: pb.RecommendBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchReply:
        problem = (
            request_id_problem(request.request_id)
            or self._n_problem(request.n)
            or self._batch_problem(len(request.histories), "histories", "history")
        )
        if not problem:
            for index, history in enumerate(request.histories):
                problem = history_problem(
                    history.items, f"histories[{index}].items", self.num_items, self.max_history
                )
                if problem:
                    break
        _check(problem)
        histories = [list(history.items) for history in request.histories]
        result = await self._candidates(histories, request.n, context)
        return self._batch_reply(result, request.request_id)

    async def _recommend_for_users(
        self, request: pb.RecommendForUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchReply:
        stored = self._store()
        _check(
            request_id_problem(request.request_id)
            or self._n_problem(request.n)
            or self._batch_problem(len(request.user_ids), "user_ids", "user")
            or user_problem(request.user_ids, len(stored))
        )
        # The store keeps each user's most recent max_history items (a long history is cut, not refused).
        histories = [stored[u].tolist() for u in request.user_ids]
        result = await self._candidates(histories, request.n, context)
        return self._batch_reply(result, request.request_id)

    async def _position_candidates_for_users(
        self, request: pb.PositionCandidatesForUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb.PositionCandidatesForUsersReply:
        stored = self._store()
        unsupported = position_source_problem(self.source)
        if unsupported:
            raise _Refused(grpc.StatusCode.UNIMPLEMENTED, unsupported)
        k = request.k
        _check(
            request_id_problem(request.request_id)
            or range_problem("k", k, self.max_n)
            or self._batch_problem(len(request.user_ids), "user_ids", "user")
            or self._position_users_problem(len(request.user_ids), k)
            or user_problem(request.user_ids, len(stored))
        )
        histories = [stored[u] for u in request.user_ids]
        deadline = _deadline(context)
        with_scores = bool(request.with_scores)
        candidates = await self._in_model(
            context,
            lambda: self._workers.submit(self._position_candidates, histories, k, deadline, with_scores),
        )
        return pb.PositionCandidatesForUsersReply(
            users=[
                pb.UserPositionCandidates(
                    user_id=user,
                    positions=int(rows.shape[0]),
                    items=rows.reshape(-1).tolist(),
                    scores=[] if scores is None else scores.reshape(-1).tolist(),
                )
                for user, (rows, scores) in zip(request.user_ids, candidates, strict=True)
            ],
            k=k,
            model_version=self.model_version,
            request_id=request.request_id,
        )

    # ------------------------------------------------------------------ the model's side
    async def _candidates(
        self, histories: list[list[int]], n: int, context: grpc.aio.ServicerContext
    ) -> CandidateList:
        """Candidates for validated ``histories``: through the micro-batcher when it is on, else alone."""
        if self.batcher is not None:
            batcher = self.batcher
            return await self._in_model(
                context, lambda: batcher.submit(histories, n, context.time_remaining())
            )
        deadline = _deadline(context)
        return await self._in_model(
            context, lambda: self._workers.submit(self._run_locked, histories, n, deadline)
        )

    async def _in_model(self, context: grpc.aio.ServicerContext, submit: Callable[[], Future[_T]]) -> _T:
        """Admit one call to the model (bounded), ``submit`` its work and wait for it without a thread.

        The wait ends at the call's deadline (``DEADLINE_EXCEEDED``); a cancelled call cancels its queued
        work, so it is never computed.
        """
        if self._in_flight >= self.max_queue:
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"service busy: {self._in_flight} calls already waiting for the model (max_queue)",
            )
        self._in_flight += 1
        try:
            try:
                future = submit()
            except QueueFull as full:
                raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"service busy: {full}") from None
            try:
                return await asyncio.wait_for(asyncio.wrap_future(future), context.time_remaining())
            except TimeoutError:  # the wait's own timeout, or expired while queued (micro_batching)
                raise _Refused(grpc.StatusCode.DEADLINE_EXCEEDED, BUSY) from None
        finally:
            self._in_flight -= 1

    def _run_locked(self, histories: list[list[int]], n: int, deadline: float | None = None) -> CandidateList:
        """``source.recommend`` under the model lock, shape-checked and padded to ``[len, n]`` (worker or
        micro-batcher thread). A failure or a malformed result is ``INTERNAL``."""
        with self._holding_model(deadline):
            try:
                result = self.source.recommend(histories, n)
            except Exception as error:
                logger.exception("candidate source failed on %d histories", len(histories))
                message = f"candidate source failed: {type(error).__name__}: {error}"
                raise _Refused(grpc.StatusCode.INTERNAL, message) from error
        try:
            return checked(result, len(histories), n)
        except ValueError as malformed:
            raise _Refused(grpc.StatusCode.INTERNAL, str(malformed)) from None

    @contextlib.contextmanager
    def _holding_model(self, deadline: float | None) -> Iterator[None]:
        """Hold the model lock (unless the source is thread-safe); ``DEADLINE_EXCEEDED`` when ``deadline``
        (``time.monotonic()``) passes first."""
        if deadline is not None and time.monotonic() > deadline:
            raise _Refused(grpc.StatusCode.DEADLINE_EXCEEDED, BUSY)
        if self._lock is None:
            yield
            return
        wait = -1 if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not self._lock.acquire(timeout=wait):
            raise _Refused(grpc.StatusCode.DEADLINE_EXCEEDED, BUSY)
        try:
            yield
        finally:
            self._lock.release()

    def _position_candidates(
        self, histories: list[np.ndarray], k: int, deadline: float | None, with_scores: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per history, ``[P_u, k]`` int64 candidates (``P_u`` = its length; 0 = empty slot) and their
        float32 scores (``-inf`` at empty slots; None unless ``with_scores`` and the model gives scores), in
        order (worker thread).

        Empty histories never reach the model. The others are sorted by length so each batch pads little,
        and the model lock is taken per batch, so other requests are not shut out for a whole large call.
        """
        out = [np.zeros((len(history), k), dtype=np.int64) for history in histories]
        # Scores when the model gives them (the cloud LLM does): the soft targets of list distillation.
        scored = with_scores and callable(getattr(self.source, "position_candidate_scores", None))
        out_scores = [np.full((len(h), k), -np.inf, dtype=np.float32) for h in histories] if scored else None
        order = sorted((i for i, h in enumerate(histories) if len(h)), key=lambda i: len(histories[i]))
        batch_size = max(1, int(getattr(self.source, "batch_size", _DEFAULT_POSITION_BATCH)))
        # Not part of the CandidateSource protocol: position_source_problem checked that the source has it.
        source: Any = self.source
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(histories[i]) for i in rows)
            padded = np.zeros((len(rows), width), dtype=np.int64)
            for row, index in enumerate(rows):
                padded[row, width - len(histories[index]) :] = histories[index]
            with self._holding_model(deadline):
                try:
                    inputs = torch.from_numpy(padded)
                    if scored:
                        items, values = source.position_candidate_scores(inputs, k)
                        top_scores = np.asarray(values, dtype=np.float32)
                    else:
                        items = source.position_candidates(inputs, k)
                    top = np.asarray(items, dtype=np.int64)
                except Exception as error:
                    logger.exception("position_candidates failed on %d histories", len(rows))
                    message = f"position_candidates failed: {type(error).__name__}: {error}"
                    raise _Refused(grpc.StatusCode.INTERNAL, message) from error
            if top.ndim != 3 or top.shape[:2] != padded.shape or top.shape[2] > k:
                message = (
                    f"position_candidates returned {tuple(top.shape)} for inputs {padded.shape} and k = {k} "
                    f"(expected [{len(rows)}, {width}, {k}])"
                )
                raise _Refused(grpc.StatusCode.INTERNAL, message)
            if scored and top_scores.shape != top.shape:
                message = f"position_candidate_scores gave scores {top_scores.shape} for items {top.shape}"
                raise _Refused(grpc.StatusCode.INTERNAL, message)
            # Left padding: a history of length n sits in the last n columns. A k above the catalogue size
            # leaves the extra columns 0 (empty slots).
            for row, index in enumerate(rows):
                length = len(histories[index])
                out[index][:, : top.shape[2]] = top[row, width - length :]
                if out_scores is not None:
                    out_scores[index][:, : top.shape[2]] = top_scores[row, width - length :]
        return [(items, None if out_scores is None else out_scores[i]) for i, items in enumerate(out)]

    # ------------------------------------------------------------------ helpers
    def _store(self) -> tuple[np.ndarray, ...]:
        """The current history snapshot (read once per request), or ``FAILED_PRECONDITION`` without one."""
        stored = self._user_histories
        if stored is None:
            raise _Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this service has no user-history store; upload histories with RecommendBatch",
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

    def _batch_problem(self, count: int, field: str, what: str) -> str | None:
        """Why a batch of ``count`` entries in ``field`` is refused (empty or over max_batch), or None."""
        if count == 0:
            return f"{field} is empty: at least one {what} is required"
        if count > self.max_batch:
            return f"{field} has {count} entries, more than max_batch = {self.max_batch}"
        return None

    def _n_problem(self, n: int) -> str | None:
        """Why ``n`` is not acceptable, or None."""
        return range_problem("n", n, self.max_n)

    def _batch_reply(self, result: CandidateList, request_id: str) -> pb.RecommendBatchReply:
        """Every row of ``result`` as one batch reply, in request order."""
        return pb.RecommendBatchReply(
            replies=[self._reply(result, row, request_id) for row in range(len(result))],
            request_id=request_id,
        )

    def _reply(self, result: CandidateList, row: int, request_id: str) -> pb.RecommendReply:
        """Row ``row`` of ``result`` as a reply message."""
        return pb.RecommendReply(
            items=result.items[row].tolist(),
            scores=result.scores[row].tolist(),
            num_items=self.num_items,
            model_version=self.model_version,
            request_id=request_id,
        )


async def _ready(value: _T) -> _T:
    """``value`` as an awaitable (for calls that need no waiting)."""
    return value


def _check(problem: str | None) -> None:
    """Refuse the call with ``INVALID_ARGUMENT`` when a check found a ``problem``."""
    if problem:
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, problem)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on ``time.monotonic()``'s clock (None when the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _log_refusal(method: str, context: grpc.aio.ServicerContext, request_id: str, refused: _Refused) -> None:
    """An ``INTERNAL`` failure is an error of the service (its traceback was logged where it happened);
    anything else is the caller's problem, a warning."""
    level = logging.ERROR if refused.code == grpc.StatusCode.INTERNAL else logging.WARNING
    logger.log(
        level,
        "refused %s from %s (request_id=%r): %s: %s",
        method,
        context.peer(),
        request_id[:MAX_REQUEST_ID],  # a refused over-long id is logged cut short
        refused.code.name,
        refused.reason,
    )


# ---------------------------------------------------------------------- running a server
class _LoopThread:
    """An asyncio event loop running in its own daemon thread: the server's home."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="candidate-service-loop", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Awaitable[_T], timeout: float | None = None) -> _T:
        """Run ``coroutine`` on the loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(_awaited(coroutine), self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10.0)
        if not self._thread.is_alive():
            self.loop.close()


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


class RunningService:
    """A started candidate service: where it listens, its counters, how to stop it (also as a context
    manager)."""

    def __init__(
        self,
        server: grpc.aio.Server,
        servicer: CandidateServicer,
        health_servicer: health.aio.HealthServicer,
        loop: _LoopThread,
        host: str,
        port: int,
        tls: bool,
    ) -> None:
        """Wrap an already started ``server``; use :func:`serve` to make one."""
        self.server = server
        self.servicer = servicer
        self.host = host
        self.port = port
        self.tls = tls
        self._health = health_servicer
        self._loop = loop
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def target(self) -> str:
        """``host:port`` to give a client (the bound port, also when the service was asked for port 0)."""
        return f"{self.host}:{self.port}"

    def metrics(self) -> MetricsSnapshot:
        """Calls by method and status, latency histograms and micro-batching counters since the start."""
        return self.servicer.snapshot()

    def update_user_histories(self, histories: Sequence[Sequence[int]]) -> None:
        """Replace the cloud's stored per-user histories (same users, ids 1..num_items) while serving.

        Thread-safe: ``RecommendForUsers`` and ``PositionCandidatesForUsers`` calls that start after this
        returns answer from ``histories``. ValueError (the old store kept) for a different number of users,
        an invalid item id, or a service started without ``user_histories``.
        """
        self.servicer.update_user_histories(histories)

    def stop(self, grace: float | None = None) -> None:
        """Report ``NOT_SERVING`` to health checks, stop accepting calls, let running ones finish for up to
        ``grace`` seconds, and wait until down. Stopping a stopped service does nothing."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            try:
                self._loop.run(self._shutdown(grace))
            finally:
                self.servicer.close()
                self._loop.close()
                self._stopped.set()
        logger.info("candidate service on %s stopped", self.target)

    async def _shutdown(self, grace: float | None) -> None:
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the service is stopped (or ``timeout`` seconds pass); True when it has stopped."""
        return self._stopped.wait(timeout)

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
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> RunningService:
    """Start a candidate service for ``source`` on ``address`` (port 0 = any free port) and return it.

    ``token`` makes every call (but health checks) require ``authorization: Bearer <token>`` metadata;
    ``tls`` serves over TLS. ``max_workers`` threads run the model's work; waiting calls hold none. Message
    limits follow from ``max_batch``, the source's ``max_history`` and ``max_n``; ``batch_delay`` switches on
    micro-batching and ``max_queue`` bounds the calls waiting for the model (:class:`CandidateServicer`).
    Raises OSError when the address cannot be bound (in use, bad host), FileNotFoundError/ValueError for
    bad TLS files.
    """
    host, _, _ = address.rpartition(":")
    if not host:
        raise ValueError(f"address {address!r} must be host:port (port 0 picks a free port)")
    credentials = tls.server_credentials() if tls is not None else None
    servicer = CandidateServicer(
        source,
        max_n=max_n,
        max_batch=max_batch,
        model_version=model_version,
        source_is_thread_safe=source_is_thread_safe,
        user_histories=user_histories,
        batch_delay=batch_delay,
        max_queue=max_queue,
        max_workers=max_workers,
    )
    if token is not None and tls is None and host not in ("127.0.0.1", "localhost", "[::1]"):
        logger.warning("candidate service on %s has a token but no TLS: the token travels in clear", address)
    loop = _LoopThread()
    try:
        server, health_servicer, port = loop.run(_start(servicer, address, token, credentials))
    except BaseException:
        servicer.close()
        loop.close()
        raise
    logger.info(
        "candidate service for %s (%d items, max_history %d, model %s) listening on %s:%d (%s, %s, %s)",
        type(source).__name__,
        servicer.num_items,
        servicer.max_history,
        servicer.model_version,
        host,
        port,
        "TLS" if tls is not None else "plaintext",
        "token auth" if token is not None else "no auth",
        "no micro-batching" if batch_delay is None else f"micro-batching within {1000 * batch_delay:g} ms",
    )
    return RunningService(server, servicer, health_servicer, loop, host, port, tls is not None)


async def _start(
    servicer: CandidateServicer, address: str, token: str | None, credentials: grpc.ServerCredentials | None
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Build, bind and start the aio server on the running loop (it belongs to the loop it is made on)."""

    def count_unauthenticated(method: str) -> None:
        servicer.metrics.record(method, grpc.StatusCode.UNAUTHENTICATED.name, 0.0)

    interceptors = [TokenAuthInterceptor(token, count_unauthenticated)] if token is not None else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", servicer.max_request_bytes),
            ("grpc.max_send_message_length", servicer.max_reply_bytes),
            # Without this a second server on a fixed port would silently share it with the first.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_CandidateServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:  # grpcio raises RuntimeError("Failed to bind to address ...")
        raise OSError(f"could not bind the candidate service to {address}: {error}") from error
    if port == 0:  # older grpcio signal a failed bind by returning port 0
        raise OSError(f"could not bind the candidate service to {address}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set(health.OVERALL_HEALTH, serving)
    await health_servicer.set(SERVICE_NAME, serving)
    return server, health_servicer, port
