"""Who may call the candidate service and over what: bearer-token authentication and TLS files.

:class:`TokenAuthInterceptor` refuses calls without ``authorization: Bearer <token>`` metadata with
``UNAUTHENTICATED`` (the standard health service stays open: load balancers and orchestrators probe it
without credentials, and it reveals nothing but "serving"). :class:`TLSConfig` reads the server's PEM files
with errors that name the file.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import grpc.aio

__all__ = ["HEALTH_METHOD_PREFIX", "TLSConfig", "TokenAuthInterceptor", "short_method"]

# The whole service logs to one logger, so its refusals (here and in the handlers) read together.
logger = logging.getLogger("lsc4rec.serving")

#: Full method names of the standard health service start with this; they need no token.
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"


def short_method(full_method: str) -> str:
    """``/package.Service/Method`` -> ``Method`` (how the logs and metrics name a call)."""
    return full_method.rsplit("/", 1)[-1]


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without ``authorization: Bearer <token>`` metadata with ``UNAUTHENTICATED``.

    The header is compared with :func:`hmac.compare_digest` (constant time, so response timing does not leak
    how much of a guess was right). The token itself is never logged. ``on_refused(method)`` is told of every
    refusal (the service counts them in its metrics).
    """

    def __init__(self, token: str, on_refused: Callable[[str], None] | None = None) -> None:
        """Accept exactly ``token``; an empty token is an error (pass no interceptor to disable auth)."""
        if not token:
            raise ValueError("empty token: pass token=None to serve without authentication")
        self._expected = f"Bearer {token}".encode()
        self._on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass authenticated calls (and health checks) on to the service; answer the others with
        ``UNAUTHENTICATED``."""
        method = handler_call_details.method
        if method.startswith(HEALTH_METHOD_PREFIX):
            return await continuation(handler_call_details)
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
            return await continuation(handler_call_details)
        if self._on_refused is not None:
            self._on_refused(short_method(method))
        return _unauthenticated_handler(short_method(method), reason)


def _as_bytes(value: str | bytes) -> bytes:
    """Metadata values arrive as str (text keys) or bytes (``-bin`` keys)."""
    return value if isinstance(value, bytes) else value.encode()


def _unauthenticated_handler(method: str, reason: str) -> grpc.RpcMethodHandler:
    """A handler that logs the refusal and aborts; every rpc of this service is unary-unary."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> NoReturn:
        logger.warning("refused %s from %s: UNAUTHENTICATED: %s", method, context.peer(), reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
        raise AssertionError("unreachable: ServicerContext.abort raises")

    return grpc.unary_unary_rpc_method_handler(refuse)


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
