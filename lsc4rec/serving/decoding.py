"""Request bytes decoded by the service's own code: undecodable bytes get ``INVALID_ARGUMENT``, no traceback.

The generated registration (``add_CandidateServiceServicer_to_server``) hands gRPC the messages'
``FromString``; bytes that are not a valid message make grpcio log an ERROR with a traceback for every call,
before any service code runs, so a client could flood the server's log. :func:`register_servicer` registers
the same methods with a deserializer that never raises: an undecodable request reaches the handler as
:class:`Undecodable`, which answers ``INVALID_ARGUMENT`` naming the expected message, counts the call in the
service's metrics, and logs at most one line per :data:`LOG_EVERY_SECONDS` (with the number left unlogged).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from lsc4rec.proto import candidate_service_pb2 as pb

__all__ = ["LOG_EVERY_SECONDS", "Undecodable", "register_servicer"]

logger = logging.getLogger(__name__)

#: At most one log line per this many seconds about undecodable requests.
LOG_EVERY_SECONDS = 10.0

SERVICE = pb.DESCRIPTOR.services_by_name["CandidateService"]


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are not a valid ``expected`` message."""

    expected: str
    size: int
    reason: str


class _RateLimitedLog:
    """One warning per interval; the calls in between are counted and reported with the next line."""

    def __init__(self, interval: float) -> None:
        self.interval, self.last, self.skipped = interval, -float("inf"), 0
        self.lock = threading.Lock()

    def warn(self, method: str, peer: str, request: Undecodable) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.last < self.interval:
                self.skipped += 1
                return
            skipped, self.skipped, self.last = self.skipped, 0, now
        logger.warning(
            "%s from %s: %d request bytes are not a valid %s (%s)%s",
            method,
            peer,
            request.size,
            request.expected,
            request.reason,
            f"; {skipped} more undecodable requests since the last line" if skipped else "",
        )


def _safe_deserializer(message_class: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except (DecodeError, ValueError) as error:
            return Undecodable(message_class.DESCRIPTOR.name, len(data), str(error) or type(error).__name__)

    return deserialize


def register_servicer(servicer: Any, server: grpc.aio.Server, record: Callable[[str, str], None]) -> None:
    """Register ``servicer``'s methods on ``server`` with decoding that never raises; ``record(method,
    status)`` counts an undecodable call in the service's metrics."""
    log = _RateLimitedLog(LOG_EVERY_SECONDS)
    handlers = {}
    for method in SERVICE.methods:
        behaviour = getattr(servicer, method.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(method.name, behaviour, log, record),
            request_deserializer=_safe_deserializer(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    generic = grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _guarded(
    name: str,
    behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    log: _RateLimitedLog,
    record: Callable[[str, str], None],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            record(name, grpc.StatusCode.INVALID_ARGUMENT.name)
            log.warn(name, context.peer(), request)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request bytes ({request.size}) are not a valid {request.expected} message",
            )
        return await behaviour(request, context)

    return handle
