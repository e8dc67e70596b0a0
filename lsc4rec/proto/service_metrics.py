"""Per-method call counters and latency histograms of the candidate service, and their wire form.

Every call the service finishes is recorded once: its method, final status code name (``OK``,
``INVALID_ARGUMENT``, ...) and its latency from arrival to reply, into fixed latency buckets (the layout of a
Prometheus histogram, so quantiles are estimated the same way). A :class:`MetricsSnapshot` is a consistent
copy; ``later.since(earlier)`` gives what happened in between (e.g. one federated round).

    snapshot = service.metrics()
    snapshot.calls("Recommend"), snapshot.quantile("Recommend", 0.99)   # seconds

It lives beside the wire format because both sides read it: the server records and sends it (``Metrics``
rpc, :func:`to_reply`), a client or operator reads it back (:func:`from_reply`).
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lsc4rec.proto import candidate_service_pb2 as pb

__all__ = ["LATENCY_BOUNDS", "MethodStats", "MetricsSnapshot", "ServiceMetrics", "from_reply", "to_reply"]

#: Upper bounds (seconds) of the latency buckets; a last bucket holds everything slower.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)


@dataclass(frozen=True)
class MethodStats:
    """One method's calls: counts by final status code, latency bucket counts and their total seconds."""

    codes: dict[str, int] = field(default_factory=dict)
    #: ``len(LATENCY_BOUNDS) + 1`` counts: calls at most each bound, the last one slower than all.
    buckets: tuple[int, ...] = (0,) * (len(LATENCY_BOUNDS) + 1)
    seconds: float = 0.0

    @property
    def calls(self) -> int:
        """Calls finished, whatever their status."""
        return sum(self.codes.values())

    @property
    def errors(self) -> int:
        """Calls that did not end ``OK``."""
        return self.calls - self.codes.get("OK", 0)

    def quantile(self, q: float) -> float | None:
        """Estimated ``q``-quantile of the latency in seconds (None without calls).

        Linear within the bucket that holds it, as Prometheus's ``histogram_quantile``; a quantile in the
        slowest bucket is reported as the largest bound (the histogram knows no more).
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q = {q} is outside 0..1")
        total = sum(self.buckets)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                if index == len(LATENCY_BOUNDS):
                    return LATENCY_BOUNDS[-1]
                low = 0.0 if index == 0 else LATENCY_BOUNDS[index - 1]
                return low + (LATENCY_BOUNDS[index] - low) * (rank - seen) / count
            seen += count
        return LATENCY_BOUNDS[-1]

    def minus(self, earlier: MethodStats) -> MethodStats:
        """What was recorded after ``earlier`` (a snapshot of the same counters)."""
        codes = {code: count - earlier.codes.get(code, 0) for code, count in self.codes.items()}
        return MethodStats(
            codes={code: count for code, count in codes.items() if count},
            buckets=tuple(a - b for a, b in zip(self.buckets, earlier.buckets, strict=True)),
            seconds=self.seconds - earlier.seconds,
        )

    def summary(self) -> dict[str, Any]:
        """Calls, codes, mean / p50 / p99 latency in milliseconds (JSON-ready)."""
        calls = self.calls
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        return {
            "calls": calls,
            "errors": self.errors,
            "codes": dict(sorted(self.codes.items())),
            "mean_ms": round(1000 * self.seconds / calls, 2) if calls else None,
            "p50_ms": None if p50 is None else round(1000 * p50, 2),
            "p99_ms": None if p99 is None else round(1000 * p99, 2),
        }


@dataclass(frozen=True)
class MetricsSnapshot:
    """The service's counters at one moment: per method, plus the micro-batcher's and the uptime."""

    methods: dict[str, MethodStats]
    #: Micro-batching counters (``batches``, ``requests``, ``rows``, ``expired``); zeros when it is off.
    batching: dict[str, int] = field(default_factory=dict)
    uptime_seconds: float = 0.0

    def stats(self, method: str) -> MethodStats:
        """The counters of ``method`` (empty when it was never called)."""
        return self.methods.get(method, MethodStats())

    def calls(self, method: str | None = None) -> int:
        """Calls finished by ``method`` (all methods when None)."""
        if method is not None:
            return self.stats(method).calls
        return sum(stats.calls for stats in self.methods.values())

    def errors(self, method: str | None = None) -> int:
        """Calls that did not end ``OK`` (all methods when None)."""
        if method is not None:
            return self.stats(method).errors
        return sum(stats.errors for stats in self.methods.values())

    def quantile(self, method: str, q: float) -> float | None:
        """Estimated latency ``q``-quantile of ``method`` in seconds (None without calls)."""
        return self.stats(method).quantile(q)

    def since(self, earlier: MetricsSnapshot) -> MetricsSnapshot:
        """What happened between ``earlier`` and this snapshot."""
        methods = {
            name: stats.minus(earlier.stats(name))
            for name, stats in self.methods.items()
            if stats.calls != earlier.stats(name).calls
        }
        batching = {key: value - earlier.batching.get(key, 0) for key, value in self.batching.items()}
        return MetricsSnapshot(methods, batching, self.uptime_seconds - earlier.uptime_seconds)

    def summary(self) -> dict[str, Any]:
        """Per-method summaries plus the batching counters (JSON-ready, for logs and ``metrics.json``)."""
        out: dict[str, Any] = {name: self.methods[name].summary() for name in sorted(self.methods)}
        if self.batching.get("batches"):
            out["batching"] = {
                **self.batching,
                "mean_rows": round(self.batching["rows"] / self.batching["batches"], 1),
            }
        return out


class ServiceMetrics:
    """Thread-safe counters the service records every finished call into."""

    def __init__(self) -> None:
        """Empty counters; the uptime starts now."""
        self._lock = threading.Lock()
        self._codes: dict[str, dict[str, int]] = {}
        self._buckets: dict[str, list[int]] = {}
        self._seconds: dict[str, float] = {}
        self._started = time.monotonic()

    def record(self, method: str, code: str, seconds: float) -> None:
        """Count one finished call of ``method`` that ended with status ``code`` after ``seconds``."""
        bucket = bisect.bisect_left(LATENCY_BOUNDS, seconds)
        with self._lock:
            codes = self._codes.setdefault(method, {})
            codes[code] = codes.get(code, 0) + 1
            self._buckets.setdefault(method, [0] * (len(LATENCY_BOUNDS) + 1))[bucket] += 1
            self._seconds[method] = self._seconds.get(method, 0.0) + seconds

    def snapshot(self, batching: dict[str, int] | None = None) -> MetricsSnapshot:
        """A consistent copy of every counter (``batching``: the micro-batcher's, when it runs)."""
        with self._lock:
            methods = {
                method: MethodStats(dict(codes), tuple(self._buckets[method]), self._seconds[method])
                for method, codes in self._codes.items()
            }
        return MetricsSnapshot(methods, dict(batching or {}), time.monotonic() - self._started)


def to_reply(snapshot: MetricsSnapshot) -> pb.MetricsReply:
    """``snapshot`` as the ``Metrics`` rpc's reply."""
    return pb.MetricsReply(
        latency_bounds_seconds=list(LATENCY_BOUNDS),
        methods=[
            pb.MethodMetrics(
                method=name,
                codes=stats.codes,
                latency_counts=list(stats.buckets),
                latency_sum_seconds=stats.seconds,
            )
            for name, stats in sorted(snapshot.methods.items())
        ],
        batches=snapshot.batching.get("batches", 0),
        batched_requests=snapshot.batching.get("requests", 0),
        batched_rows=snapshot.batching.get("rows", 0),
        expired=snapshot.batching.get("expired", 0),
        uptime_seconds=snapshot.uptime_seconds,
    )


def from_reply(reply: pb.MetricsReply) -> MetricsSnapshot:
    """The snapshot a ``Metrics`` reply carries. ValueError when its buckets are not this version's."""
    if tuple(reply.latency_bounds_seconds) != LATENCY_BOUNDS:
        raise ValueError(
            f"the service's latency buckets {list(reply.latency_bounds_seconds)} differ from this client's "
            f"{list(LATENCY_BOUNDS)}: client and server come from different lsc4rec versions"
        )
    methods = {}
    for entry in reply.methods:
        if len(entry.latency_counts) != len(LATENCY_BOUNDS) + 1:
            raise ValueError(
                f"metrics of {entry.method!r} have {len(entry.latency_counts)} latency counts, expected "
                f"{len(LATENCY_BOUNDS) + 1}"
            )
        methods[entry.method] = MethodStats(
            dict(entry.codes), tuple(entry.latency_counts), entry.latency_sum_seconds
        )
    batching = (
        {
            "batches": reply.batches,
            "requests": reply.batched_requests,
            "rows": reply.batched_rows,
            "expired": reply.expired,
        }
        if reply.batches or reply.expired
        else {}
    )
    return MetricsSnapshot(methods, batching, reply.uptime_seconds)
