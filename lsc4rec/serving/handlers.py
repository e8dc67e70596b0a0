"""The candidate service's rpc handlers: :class:`CandidateServicer`, one method per ``CandidateService`` rpc.

Each rpc checks its request (:mod:`lsc4rec.serving.admission`, ``INVALID_ARGUMENT`` naming the offending
field and value), hands validated histories to the model (:mod:`lsc4rec.serving.model_runner`, through the
bounded :class:`~lsc4rec.serving.admission.Admission`) and builds its reply (:mod:`lsc4rec.serving.replies`).
Every call is counted by method and final status with its latency; every refused call is logged with its
reason. The servicer also holds the cloud's per-user history store that ``RecommendForUsers`` and
``PositionCandidatesForUsers`` answer from.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import grpc
import grpc.aio
import numpy as np

from lsc4rec.models.llm.candidates import CandidateList, CandidateSource
from lsc4rec.proto import candidate_service_pb2 as pb
from lsc4rec.proto import candidate_service_pb2_grpc as pb_grpc
from lsc4rec.proto.service_metrics import MetricsSnapshot, ServiceMetrics, to_reply
from lsc4rec.serving.admission import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_N,
    DEFAULT_MAX_QUEUE,
    MAX_REQUEST_ID,
    Admission,
    Refused,
    ServiceLimits,
    check,
    deadline_of,
    position_source_problem,
    range_problem,
    request_id_problem,
    stored_histories,
    user_problem,
)
from lsc4rec.serving.micro_batching import MicroBatcher
from lsc4rec.serving.model_runner import ModelRunner
from lsc4rec.serving.replies import batch_reply, info_reply, position_reply, recommend_reply

__all__ = ["SERVICE_NAME", "CandidateServicer"]

logger = logging.getLogger("lsc4rec.serving")

#: The service's full gRPC name, as health checks name it.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CandidateService"].full_name

_T = TypeVar("_T")


class CandidateServicer(pb_grpc.CandidateServiceServicer):
    """Asynchronous gRPC servicer that validates requests and answers them with a wrapped source.

    The source's ``num_items`` and ``max_history`` are read once, at construction: they are the contract the
    service advertises through ``Info`` (:attr:`limits`). The source runs in worker threads (``max_workers``),
    never on the event loop; calls into it are serialised with a lock unless ``source_is_thread_safe`` (models
    keep per-call state and torch modules are not re-entrant in general), so concurrent requests never see
    each other's histories. A call whose deadline passes while it waits is dropped with ``DEADLINE_EXCEEDED``
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
        ``RecommendForUsers`` calls in micro-batches (:class:`~lsc4rec.serving.micro_batching.MicroBatcher`):
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
        self.limits = limits = ServiceLimits.for_source(source, max_n, max_batch, max_queue, model_version)
        # The limits' fields as attributes of their own, as callers (deploy/secure.py) read them.
        self.num_items, self.max_history = limits.num_items, limits.max_history
        self.max_n, self.max_batch, self.max_queue = limits.max_n, limits.max_batch, limits.max_queue
        self.model_version = limits.model_version
        # Writers swap the snapshot under this lock; readers take the reference once per request (an
        # attribute read is atomic), so a request never waits for an update nor sees half of one.
        self._histories_lock = threading.Lock()
        self._user_histories: tuple[np.ndarray, ...] | None = (
            None
            if user_histories is None
            else stored_histories(user_histories, self.num_items, self.max_history)
        )
        self.metrics = ServiceMetrics()
        self._admission = Admission(self.max_queue)
        self._runner = ModelRunner(
            source,
            thread_safe=source_is_thread_safe,
            max_workers=max_workers,
            max_batch=self.max_batch,
            batch_delay=batch_delay,
            max_queue=self.max_queue,
        )

    @property
    def batcher(self) -> MicroBatcher | None:
        """The micro-batcher answering ``Recommend``-style calls, or None when micro-batching is off."""
        return self._runner.batcher

    def close(self) -> None:
        """Stop the micro-batcher and the worker threads (after the server stopped)."""
        self._runner.close()

    def snapshot(self) -> MetricsSnapshot:
        """The service's counters now (:class:`~lsc4rec.proto.service_metrics.MetricsSnapshot`)."""
        return self.metrics.snapshot(self._runner.batching_counters())

    def info(self) -> pb.ServiceInfo:
        """The catalogue size and request limits this servicer enforces."""
        return info_reply(self.limits)

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

    def _store(self) -> tuple[np.ndarray, ...]:
        """The current history snapshot (read once per request), or ``FAILED_PRECONDITION`` without one."""
        stored = self._user_histories
        if stored is None:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this service has no user-history store; upload histories with RecommendBatch",
            )
        return stored

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
        except Refused as refused:
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
        check(
            request_id_problem(request.request_id)
            or self.limits.n_problem(request.n)
            or self.limits.history_problem(request.history, "history")
        )
        result = await self._candidates([list(request.history)], request.n, context)
        return recommend_reply(result, 0, request.request_id, self.limits)

    async def _recommend_batch(
        self, request: pb.RecommendBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchReply:
        problem = (
            request_id_problem(request.request_id)
            or self.limits.n_problem(request.n)
            or self.limits.batch_problem(len(request.histories), "histories", "history")
        )
        if not problem:
            for index, history in enumerate(request.histories):
                problem = self.limits.history_problem(history.items, f"histories[{index}].items")
                if problem:
                    break
        check(problem)
        histories = [list(history.items) for history in request.histories]
        result = await self._candidates(histories, request.n, context)
        return batch_reply(result, request.request_id, self.limits)

    async def _recommend_for_users(
        self, request: pb.RecommendForUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchReply:
        stored = self._store()
        check(
            request_id_problem(request.request_id)
            or self.limits.n_problem(request.n)
            or self.limits.batch_problem(len(request.user_ids), "user_ids", "user")
            or user_problem(request.user_ids, len(stored))
        )
        # The store keeps each user's most recent max_history items (a long history is cut, not refused).
        histories = [stored[u].tolist() for u in request.user_ids]
        result = await self._candidates(histories, request.n, context)
        return batch_reply(result, request.request_id, self.limits)

    async def _position_candidates_for_users(
        self, request: pb.PositionCandidatesForUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb.PositionCandidatesForUsersReply:
        stored = self._store()
        check(position_source_problem(self.source), grpc.StatusCode.UNIMPLEMENTED)
        k = request.k
        check(
            request_id_problem(request.request_id)
            or range_problem("k", k, self.max_n)
            or self.limits.batch_problem(len(request.user_ids), "user_ids", "user")
            or self.limits.position_users_problem(len(request.user_ids), k)
            or user_problem(request.user_ids, len(stored))
        )
        histories = [stored[u] for u in request.user_ids]
        deadline = deadline_of(context)
        with_scores = bool(request.with_scores)
        runner = self._runner
        candidates = await self._admission.run(
            context, lambda: runner.submit_positions(histories, k, deadline, with_scores)
        )
        return position_reply(request.user_ids, candidates, k, request.request_id, self.limits)

    async def _candidates(
        self, histories: list[list[int]], n: int, context: grpc.aio.ServicerContext
    ) -> CandidateList:
        """Candidates for validated ``histories``: through the micro-batcher when it is on, else alone."""
        runner = self._runner
        return await self._admission.run(
            context, lambda: runner.submit_recommend(histories, n, context.time_remaining())
        )


async def _ready(value: _T) -> _T:
    """``value`` as an awaitable (for calls that need no waiting)."""
    return value


def _log_refusal(method: str, context: grpc.aio.ServicerContext, request_id: str, refused: Refused) -> None:
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
