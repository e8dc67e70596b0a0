"""The cloud as devices use it: when the candidate service is down, serve on, count it, and come back.

A device never stops recommending because the cloud is unreachable. :class:`FallbackCloud` wraps any
:class:`~lsc4rec.models.llm.candidates.CandidateSource` (the gRPC client on a device, the LLM itself in an
in-process simulation): a call that fails for a reason that passes (service down or restarting, overloaded,
too slow) returns ``None`` instead of raising, is counted by status, and makes the device leave the service
alone for a short, growing pause (so an outage costs no timeout per arrival); the first call after the pause
tries again, so devices use the service as soon as it is back. What the caller does without an answer:
a device keeps the list it holds (stale) or, holding none, ranks with its own model (:func:`empty_lists`).

Failures that retrying cannot fix (a wrong token, a refused request, a server without the method) are
raised: they are configuration errors to fix, not outages to ride out.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import numpy as np

from lsc4rec.client.collab.candidate_client import CandidateServiceError
from lsc4rec.models.llm.candidates import CandidateList, CandidateSource

__all__ = ["TRANSIENT_CODES", "CloudCalls", "FallbackCloud", "as_fallback", "empty_lists"]

logger = logging.getLogger(__name__)

#: Statuses a device rides out: the service is down or restarting, overloaded, too slow, or the call was
#: cut (a server killed mid-call answers UNAVAILABLE, CANCELLED or UNKNOWN depending on when it died).
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)

_T = TypeVar("_T")


@dataclass
class CloudCalls:
    """What happened to the calls a device made (or skipped) to the cloud."""

    answered: int = 0
    #: Calls that failed with a transient status, by status name.
    failed: Counter[str] = field(default_factory=Counter)
    #: Calls not made because the service failed moments before (within the pause).
    skipped: int = 0

    @property
    def unanswered(self) -> int:
        """Calls that got no list: failed or skipped."""
        return sum(self.failed.values()) + self.skipped


class FallbackCloud:
    """A candidate source that answers ``None`` instead of raising while the service is unreachable.

    ``pause`` is the first wait after a failure (seconds); each further failure in a row doubles it, up to
    ``max_pause``; an answered call resets it. ``calls`` counts answered, failed and skipped calls.
    """

    def __init__(
        self,
        source: CandidateSource,
        pause: float = 0.25,
        max_pause: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Wrap ``source`` (any :class:`CandidateSource`; extra client methods are used when it has them)."""
        if not 0 < pause <= max_pause:
            raise ValueError(f"need 0 < pause <= max_pause, got pause={pause}, max_pause={max_pause}")
        self.source = source
        self.pause = float(pause)
        self.max_pause = float(max_pause)
        self.calls = CloudCalls()
        self._clock = clock
        self._retry_at = float("-inf")
        self._failures_in_a_row = 0

    @property
    def available(self) -> bool:
        """False during the pause after a failure (calls are skipped, not made)."""
        return self._clock() >= self._retry_at

    @property
    def max_history(self) -> int:
        """The longest history the service accepts (known once it has answered a call)."""
        return self.source.max_history

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList | None:
        """Fresh top-``n`` lists for ``histories`` (each cut to its last ``max_history`` items), or None."""
        return self._attempt(
            "recommend",
            lambda: self.source.recommend([list(h)[-self.source.max_history :] for h in histories], n),
        )

    def recommend_for_users(self, users: Sequence[int], n: int) -> CandidateList | None:
        """The cloud's lists from its own copy of each user's history, or None."""
        return self._attempt("recommend_for_users", lambda: self.source.recommend_for_users(users, n))  # type: ignore[attr-defined]

    def position_candidates_for_users(self, users: Sequence[int], k: int) -> list[np.ndarray] | None:
        """The cloud's candidates after every prefix of each user's stored history, or None."""
        return self._attempt(
            "position_candidates_for_users",
            lambda: self.source.position_candidates_for_users(users, k),  # type: ignore[attr-defined]
        )

    def position_candidate_scores_for_users(
        self, users: Sequence[int], k: int
    ) -> list[tuple[np.ndarray, np.ndarray | None]] | None:
        """:meth:`position_candidates_for_users` with the cloud's scores of those items, or None."""
        return self._attempt(
            "position_candidate_scores_for_users",
            lambda: self.source.position_candidate_scores_for_users(users, k),  # type: ignore[attr-defined]
        )

    def _attempt(self, method: str, call: Callable[[], _T]) -> _T | None:
        if not self.available:
            self.calls.skipped += 1
            return None
        try:
            result = call()
        except CandidateServiceError as error:
            if error.code not in TRANSIENT_CODES:
                raise
            self.calls.failed[error.code.name] += 1
            wait = min(self.pause * 2**self._failures_in_a_row, self.max_pause)
            # One warning per outage, not one per retry.
            log = logger.warning if self._failures_in_a_row == 0 else logger.debug
            log("%s: %s; serving without the cloud, retrying in %.2f s", method, error, wait)
            self._failures_in_a_row += 1
            self._retry_at = self._clock() + wait
            return None
        if self._failures_in_a_row:
            logger.info("%s: the candidate service answers again", method)
        self._failures_in_a_row = 0
        self.calls.answered += 1
        return result


def empty_lists(rows: int, n: int) -> CandidateList:
    """Lists with no cloud candidates (item 0, score -inf): a device holding one ranks with its own model
    and is the first to ask the cloud again."""
    return CandidateList(np.zeros((rows, n), dtype=np.int64), np.full((rows, n), -np.inf, dtype=np.float32))


def as_fallback(cloud: CandidateSource | FallbackCloud) -> FallbackCloud:
    """``cloud`` itself when it already is a :class:`FallbackCloud`, else ``cloud`` wrapped in one."""
    return cloud if isinstance(cloud, FallbackCloud) else FallbackCloud(cloud)
