"""Dynamic micro-batching of concurrent requests into one call of the candidate source.

Concurrent calls (``Recommend``, ``RecommendBatch``, ``RecommendForUsers``) each wait on a future; one
batching thread gathers pending requests for at most ``max_delay`` seconds (or until their histories reach
``max_batch``), groups them by ``n`` and answers each group with one call of the source, so a batch costs
about one forward pass instead of one per request. Every request gets the rows the source computes for its own
histories (the source ranks rows independently). A request whose deadline has passed before its batch runs is
dropped, not computed; a full queue refuses new requests at once (:class:`QueueFull`) instead of growing
without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from lsc4rec.models.llm.candidates import CandidateList

__all__ = ["MicroBatcher", "QueueFull"]

logger = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The batcher's queue is at ``max_queue``: the caller should answer ``RESOURCE_EXHAUSTED``."""


@dataclass
class _Pending:
    histories: list[list[int]]
    n: int
    deadline: float | None
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Answer requests in batches through ``run_batch(histories, n) -> CandidateList``."""

    def __init__(
        self,
        run_batch: Callable[[list[list[int]], int], CandidateList],
        max_batch: int = 64,
        max_delay: float = 0.005,
        max_queue: int = 1024,
    ) -> None:
        """``max_delay`` seconds is the longest a request waits for company; ``max_queue`` bounds memory."""
        if max_batch < 1 or max_queue < 1 or max_delay < 0:
            raise ValueError(
                f"micro-batching needs max_batch >= 1, max_queue >= 1, max_delay >= 0; got {max_batch}, "
                f"{max_queue}, {max_delay}"
            )
        self.run_batch = run_batch
        self.max_batch, self.max_delay = int(max_batch), float(max_delay)
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=int(max_queue))
        #: Calls of ``run_batch``, requests and histories they answered, requests dropped as expired.
        self.batches = 0
        self.requests = 0
        self.rows = 0
        self.expired = 0
        self._thread = threading.Thread(target=self._loop, name="candidate-micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, histories: Sequence[Sequence[int]], n: int, timeout: float | None = None) -> Future:
        """Queue one request of ``histories``; its future resolves to their CandidateList (``[len, n]``),
        or to the batch's exception.

        Raises :class:`QueueFull` when ``max_queue`` requests are already waiting.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = _Pending([list(h) for h in histories], int(n), deadline)
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests already waiting") from None
        return pending.future

    def close(self) -> None:
        """Stop the batching thread after the requests already queued."""
        self._queue.put(None)
        self._thread.join(timeout=10.0)

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """``first`` and what arrives within ``max_delay``, up to ``max_batch`` rows; True when closing."""
        batch = [first]
        rows = len(first.histories)
        until = time.monotonic() + self.max_delay
        while rows < self.max_batch:
            remaining = until - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=max(remaining, 0.0))
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            rows += len(item.histories)
        return batch, False

    def _loop(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is None:
                return
            batch, closing = self._gather(first)
            now = time.monotonic()
            live = []
            for pending in batch:
                if pending.deadline is not None and now > pending.deadline:
                    # Its caller has given up (DEADLINE_EXCEEDED): computing it would only delay the others.
                    self.expired += 1
                    pending.future.set_exception(TimeoutError("deadline passed while queued"))
                elif pending.future.set_running_or_notify_cancel():
                    live.append(pending)
            for n in sorted({p.n for p in live}):
                group = [p for p in live if p.n == n]
                self._answer(group, n)

    def _answer(self, group: list[_Pending], n: int) -> None:
        """One call of the source for ``group`` (same ``n``); each future gets its own rows."""
        try:
            result = self.run_batch([h for p in group for h in p.histories], n)
        except Exception as error:  # every request of the batch sees the source's failure
            for pending in group:
                pending.future.set_exception(error)
            return
        self.batches += 1
        self.requests += len(group)
        self.rows += len(result)
        start = 0
        for pending in group:
            stop = start + len(pending.histories)
            pending.future.set_result(
                CandidateList(result.items[start:stop].copy(), result.scores[start:stop].copy())
            )
            start = stop
