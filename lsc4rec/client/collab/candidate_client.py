"""Device-side stub of the cloud's gRPC candidate service, usable wherever a :class:`CandidateSource` is.

    with CandidateServiceClient("cloud:50051", token=token, root_certificates="ca.pem") as cloud:
        candidates = cloud.recommend(histories, n=20)   # CandidateList [B, 20]

Only the wire format (:mod:`lsc4rec.proto`) is shared with the server; this module never imports
``lsc4rec.server`` (devices do not ship the server package).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.proto import candidate_service_pb2 as pb
from lsc4rec.proto import candidate_service_pb2_grpc as pb_grpc
from lsc4rec.proto.service_metrics import MetricsSnapshot, from_reply

__all__ = ["CandidateServiceClient", "CandidateServiceError", "CandidateServiceInfo"]

# The server bounds its replies by its own limits; this only has to be above the largest one it may send
# (gRPC's default client limit of 4 MiB is below a full batch of long candidate lists).
_MAX_REPLY_BYTES = 64 << 20

_Reply = TypeVar("_Reply")
#: The candidate service's full gRPC name, as health checks name it.
_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CandidateService"].full_name


class CandidateServiceError(RuntimeError):
    """A failed call to the candidate service: the gRPC status ``code`` and the server's ``details``.

    ``str(error)`` adds what usually causes that status (e.g. a TLS mismatch for ``UNAVAILABLE``), so a
    device log says what to check.
    """

    def __init__(self, code: grpc.StatusCode, details: str, method: str, target: str, hint: str = "") -> None:
        """Describe a failed ``method`` call to ``target``."""
        self.code = code
        self.details = details
        self.method = method
        self.target = target
        suffix = f" ({hint})" if hint else ""
        super().__init__(f"candidate service {target} {method}: {code.name}: {details}{suffix}")


@dataclass(frozen=True)
class CandidateServiceInfo:
    """What the service advertises: catalogue size, request limits and the model behind it."""

    num_items: int
    max_history: int
    max_n: int
    max_batch: int
    model_version: str
    #: Most item ids one ``PositionCandidatesForUsers`` reply may carry (each user counted at max_history
    #: positions); 0 from a service that predates that rpc.
    max_position_ids: int = 0

    def max_position_users(self, k: int) -> int:
        """Most users one ``PositionCandidatesForUsers`` call may ask for at ``k`` candidates per position
        (the server refuses more): ``max_batch``, less when ``max_history * k`` ids per user would take the
        reply past ``max_position_ids``; at least 1 (a bad ``k`` is the server's to refuse)."""
        per_user = self.max_history * max(k, 1)
        return max(1, min(self.max_batch, self.max_position_ids // max(per_user, 1)))


class CandidateServiceClient:
    """A :class:`~lsc4rec.models.llm.candidates.CandidateSource` that asks a remote candidate service.

    ``num_items``, ``max_history`` (and ``max_n``, ``max_batch``, ``model_version``) come from one ``Info``
    call made on first use and cached for the client's lifetime; :meth:`info` with ``refresh=True`` asks
    again (e.g. after the cloud swapped models). Creating a client makes no call, so it can be built before
    the service is up. Every call has a deadline of ``timeout`` seconds and every failure is raised as
    :class:`CandidateServiceError`. One client (one channel) may be shared by many threads.

    Note: ``isinstance(client, CandidateSource)`` on Python 3.11 reads the protocol's properties, i.e. it
    makes the ``Info`` call (and raises CandidateServiceError if the service is unreachable).
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        root_certificates: bytes | str | Path | None = None,
        timeout: float = 2.0,
    ) -> None:
        """Connect to ``address`` (``host:port``): over TLS when ``root_certificates`` is given (PEM bytes, or
        the path of a PEM file with the CA/self-signed certificate to trust), with ``authorization: Bearer``
        metadata when ``token`` is given."""
        if timeout <= 0:
            raise ValueError(f"timeout = {timeout} must be > 0 seconds")
        if token is not None and not token:
            raise ValueError("empty token: pass token=None to connect without authentication")
        self.address = address
        self.timeout = float(timeout)
        self.tls = root_certificates is not None
        options = [
            ("grpc.max_receive_message_length", _MAX_REPLY_BYTES),
            # A restarted service is found within seconds: gRPC's default reconnect backoff grows to 120 s,
            # so a device would keep failing long after a long outage ended.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if root_certificates is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=_pem_bytes(root_certificates))
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = pb_grpc.CandidateServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
        self._info: CandidateServiceInfo | None = None
        self._info_lock = threading.Lock()

    # ------------------------------------------------------------------ service description
    def info(self, refresh: bool = False) -> CandidateServiceInfo:
        """The service's :class:`CandidateServiceInfo` (one ``Info`` call, then cached unless ``refresh``)."""
        with self._info_lock:
            if self._info is None or refresh:
                reply: pb.ServiceInfo = self._call("Info", self._stub.Info, pb.InfoRequest())
                self._info = CandidateServiceInfo(
                    num_items=reply.num_items,
                    max_history=reply.max_history,
                    max_n=reply.max_n,
                    max_batch=reply.max_batch,
                    model_version=reply.model_version,
                    max_position_ids=reply.max_position_ids,
                )
            return self._info

    @property
    def num_items(self) -> int:
        """Catalogue size; valid item ids are 1..num_items (from the service's ``Info``)."""
        return self.info().num_items

    @property
    def max_history(self) -> int:
        """Longest history the service accepts; longer ones are refused (from the service's ``Info``)."""
        return self.info().max_history

    @property
    def max_n(self) -> int:
        """Largest ``n`` the service accepts."""
        return self.info().max_n

    @property
    def model_version(self) -> str:
        """The model behind the service, as of the last ``Info`` call."""
        return self.info().model_version

    def metrics(self) -> MetricsSnapshot:
        """The service's calls by method and status, latency histograms and micro-batching counters since
        it started (one ``Metrics`` call)."""
        return from_reply(self._call("Metrics", self._stub.Metrics, pb.MetricsRequest()))

    def health(self, service: str = _SERVICE_NAME) -> str:
        """The standard ``grpc.health.v1`` check's status for ``service`` (the candidate service by default,
        ``""`` for the whole server): ``"SERVING"`` or ``"NOT_SERVING"``. Needs no token."""
        request = health_pb2.HealthCheckRequest(service=service)
        reply = self._call("Health/Check", self._health.Check, request)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # ------------------------------------------------------------------ recommending
    def recommend(self, histories: Sequence[Sequence[int]], n: int, request_id: str = "") -> CandidateList:
        """Top-``n`` candidates per history via ``RecommendBatch``, in calls of at most ``max_batch``
        histories; items ``[B, n]`` (0 = empty slot) and float32 log-probability scores (-inf there)."""
        return self._batched(
            histories,
            n,
            "RecommendBatch",
            self._stub.RecommendBatch,
            lambda part: pb.RecommendBatchRequest(
                histories=[pb.History(items=_ids(history)) for history in part], n=n, request_id=request_id
            ),
        )

    def recommend_for_users(self, user_ids: Sequence[int], n: int, request_id: str = "") -> CandidateList:
        """Top-``n`` candidates per user from the cloud's own copy of their histories (nothing uploaded)."""
        return self._batched(
            user_ids,
            n,
            "RecommendForUsers",
            self._stub.RecommendForUsers,
            lambda part: pb.RecommendForUsersRequest(
                user_ids=[int(u) for u in part], n=n, request_id=request_id
            ),
        )

    def position_candidates_for_users(
        self, user_ids: Sequence[int], k: int, request_id: str = ""
    ) -> list[np.ndarray]:
        """The cloud LLM's top-``k`` next items after every prefix of each user's stored (stale) history.

        One int64 array ``[P_u, k]`` per user, in request order: row ``j`` holds the candidates for the item
        that follows the first ``j + 1`` items of the user's stored history (its last ``max_history`` items),
        best first, 0 = empty slot; ``P_u = 0`` for a user with no stored history. Asked in calls of at most
        ``info().max_position_users(k)`` users, so every reply stays under the service's message limits.
        """
        pairs = self.position_candidate_scores_for_users(user_ids, k, request_id, with_scores=False)
        return [items for items, _ in pairs]

    def position_candidate_scores_for_users(
        self, user_ids: Sequence[int], k: int, request_id: str = "", with_scores: bool = True
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """:meth:`position_candidates_for_users` with the model's float32 scores of the same items
        (``[P_u, k]``, ``-inf`` at empty slots), or None per user when the service's model gives none."""
        method = "PositionCandidatesForUsers"
        if len(user_ids) == 0:
            return []
        chunk = self.info().max_position_users(k)
        out: list[tuple[np.ndarray, np.ndarray | None]] = []
        for start in range(0, len(user_ids), chunk):
            part = [int(u) for u in user_ids[start : start + chunk]]
            request = pb.PositionCandidatesForUsersRequest(
                user_ids=part, k=k, request_id=request_id, with_scores=with_scores
            )
            reply: pb.PositionCandidatesForUsersReply = self._call(
                method, self._stub.PositionCandidatesForUsers, request
            )
            if len(reply.users) != len(part):
                self._bad_reply(method, f"{len(reply.users)} users in the reply for {len(part)} requested")
            for user, entry in zip(part, reply.users, strict=True):
                if entry.user_id != user or entry.positions < 0 or len(entry.items) != entry.positions * k:
                    self._bad_reply(
                        method,
                        f"entry for user {entry.user_id} (asked {user}) has {entry.positions} positions and "
                        f"{len(entry.items)} items, expected positions * k (k = {k})",
                    )
                if len(entry.scores) not in (0, len(entry.items)):
                    counts = f"{len(entry.scores)} scores for {len(entry.items)} items"
                    self._bad_reply(method, f"entry for user {user} has {counts}")
                items = np.asarray(entry.items, dtype=np.int64).reshape(entry.positions, k)
                scores = None
                if with_scores and (len(entry.scores) or not len(entry.items)):
                    scores = np.asarray(entry.scores, dtype=np.float32).reshape(entry.positions, k)
                out.append((items, scores))
        return out

    def _bad_reply(self, method: str, problem: str) -> NoReturn:
        """A reply that does not match its request is a server bug: raise it as ``INTERNAL``."""
        raise CandidateServiceError(grpc.StatusCode.INTERNAL, problem, method, self.address)

    def _batched(
        self,
        rows: Sequence,
        n: int,
        method: str,
        rpc: Callable[..., pb.RecommendBatchReply],
        make_request: Callable[[Sequence], object],
    ) -> CandidateList:
        """Answer ``rows`` (histories or user ids) in calls of at most ``max_batch``, one reply per row."""
        if len(rows) == 0:
            width = max(n, 0)
            return CandidateList(np.zeros((0, width), dtype=np.int64), np.zeros((0, width), dtype=np.float32))
        chunk = self.info().max_batch
        # Allocated once the server has accepted n (a bad n must become its INVALID_ARGUMENT, not a
        # numpy error or a huge allocation here).
        items = scores = np.empty(0)
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            reply = self._call(method, rpc, make_request(part))
            if len(reply.replies) != len(part):
                raise CandidateServiceError(
                    grpc.StatusCode.INTERNAL,
                    f"{len(reply.replies)} replies for {len(part)} rows",
                    method,
                    self.address,
                )
            if start == 0:
                items = np.zeros((len(rows), n), dtype=np.int64)
                scores = np.full((len(rows), n), -np.inf, dtype=np.float32)
            for offset, row in enumerate(reply.replies):
                self._fill(row, n, items, scores, start + offset, method)
        return CandidateList(items, scores)

    def recommend_one(self, history: Sequence[int], n: int, request_id: str = "") -> CandidateList:
        """Top-``n`` candidates for a single history via the unary ``Recommend`` rpc (a ``[1, n]`` list)."""
        request = pb.RecommendRequest(history=_ids(history), n=n, request_id=request_id)
        reply: pb.RecommendReply = self._call("Recommend", self._stub.Recommend, request)
        items = np.zeros((1, n), dtype=np.int64)  # n is valid here: the server accepted it
        scores = np.full((1, n), -np.inf, dtype=np.float32)
        self._fill(reply, n, items, scores, 0, "Recommend")
        return CandidateList(items, scores)

    def _fill(
        self, reply: pb.RecommendReply, n: int, items: np.ndarray, scores: np.ndarray, row: int, method: str
    ) -> None:
        """Copy one reply into row ``row``; a reply of the wrong length is a server bug, reported as such."""
        if len(reply.items) != n or len(reply.scores) != n:
            raise CandidateServiceError(
                grpc.StatusCode.INTERNAL,
                f"reply has {len(reply.items)} items and {len(reply.scores)} scores, expected n = {n}",
                method,
                self.address,
            )
        items[row] = reply.items
        scores[row] = reply.scores

    def _call(self, method: str, rpc: Callable[..., _Reply], request: object) -> _Reply:
        """Make one call with the client's deadline and token; gRPC errors become CandidateServiceError."""
        try:
            return rpc(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            # Errors raised by a unary call are also grpc.Call objects, which carry code() and details().
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise CandidateServiceError(
                code, details or "", method, self.address, self._hint(code)
            ) from error

    def _hint(self, code: grpc.StatusCode) -> str:
        """What usually causes ``code`` for this client."""
        if code == grpc.StatusCode.UNAVAILABLE:
            if self.tls:
                expect = "TLS with a certificate the client's root_certificates trust"
            else:
                expect = "plaintext, as this client has no root_certificates"
            return f"is the service running at {self.address}, and does it serve {expect}?"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return "no token given to the client" if self._metadata is None else "check the client's token"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return (
                f"no answer within the client's timeout of {self.timeout:g} s; raise it or check server load"
            )
        return ""

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close the channel; calls made afterwards fail."""
        self._channel.close()

    def __enter__(self) -> CandidateServiceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _ids(history: Sequence[int]) -> list[int]:
    """Item ids as a list of Python ints, from any sequence, numpy array or (CPU) tensor of ids."""
    return np.asarray(history, dtype=np.int64).tolist()


def _pem_bytes(root_certificates: bytes | str | Path) -> bytes:
    """PEM bytes given directly, as text, or as a file path (FileNotFoundError names a missing file)."""
    if isinstance(root_certificates, bytes):
        return root_certificates
    if isinstance(root_certificates, str) and root_certificates.lstrip().startswith("-----BEGIN"):
        return root_certificates.encode()
    path = Path(root_certificates).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"TLS root certificates file not found: {path}")
    return path.read_bytes()
