"""Starting and stopping the candidate service: :func:`serve` and the :class:`RunningService` it returns.

The server runs on ``grpc.aio`` in its own event-loop thread: a call waiting for the model holds no thread,
only the model's work runs in threads. :func:`serve` binds the address, installs the token check
(:mod:`lsc4rec.serving.security`) and message limits, and answers the standard ``grpc.health.v1.Health``
checks (``NOT_SERVING`` once stopping).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lsc4rec.models.llm.candidates import CandidateSource
from lsc4rec.proto.service_metrics import MetricsSnapshot
from lsc4rec.serving.admission import DEFAULT_MAX_BATCH, DEFAULT_MAX_N, DEFAULT_MAX_QUEUE
from lsc4rec.serving.decoding import register_servicer
from lsc4rec.serving.handlers import SERVICE_NAME, CandidateServicer
from lsc4rec.serving.security import TLSConfig, TokenAuthInterceptor

__all__ = ["RunningService", "serve"]

logger = logging.getLogger("lsc4rec.serving")

_T = TypeVar("_T")


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
            ("grpc.max_receive_message_length", servicer.limits.max_request_bytes),
            ("grpc.max_send_message_length", servicer.limits.max_reply_bytes),
            # Without this a second server on a fixed port would silently share it with the first.
            ("grpc.so_reuseport", 0),
        ],
    )
    # Not the generated registration: undecodable request bytes must reach our code (decoding.py).
    register_servicer(servicer, server, lambda method, code: servicer.metrics.record(method, code, 0.0))
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
