"""The candidate service's side of the model: the source's work in worker threads, never on the event loop.

:class:`ModelRunner` serialises calls into the source with a lock unless the source is thread-safe (models
keep per-call state and torch modules are not re-entrant in general), drops work whose deadline passed while
it waited for the lock, checks and pads what the source returns, and answers ``Recommend``-style work through
the micro-batcher (:mod:`lsc4rec.serving.micro_batching`) when it is on. A source failure or a malformed
result becomes an ``INTERNAL`` :class:`~lsc4rec.serving.admission.Refused`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import torch

from lsc4rec.models.llm.candidates import CandidateList, CandidateSource
from lsc4rec.serving.admission import BUSY, Refused, checked
from lsc4rec.serving.micro_batching import MicroBatcher

__all__ = ["ModelRunner", "PositionRows"]

logger = logging.getLogger("lsc4rec.serving")

#: Users per ``position_candidates`` call when the source does not say (``CloudLLM.batch_size`` does).
_DEFAULT_POSITION_BATCH = 256

#: One user's per-position candidates ``[P_u, k]`` and their scores (None when not asked for or not given).
PositionRows = tuple[np.ndarray, np.ndarray | None]


class ModelRunner:
    """Runs a candidate source's work in ``max_workers`` threads (or the micro-batcher), one call at a time
    unless ``thread_safe``."""

    def __init__(
        self,
        source: CandidateSource,
        *,
        thread_safe: bool,
        max_workers: int,
        max_batch: int,
        batch_delay: float | None,
        max_queue: int,
    ) -> None:
        """``batch_delay`` (seconds; None = off) switches on micro-batching of up to ``max_batch`` rows."""
        self.source = source
        self._lock: threading.Lock | None = None if thread_safe else threading.Lock()
        self._workers = ThreadPoolExecutor(max_workers, thread_name_prefix="candidate-model")
        self.batcher = (
            MicroBatcher(self.recommend, max_batch, batch_delay, max_queue)
            if batch_delay is not None
            else None
        )

    def close(self) -> None:
        """Stop the micro-batcher and the worker threads (after the server stopped)."""
        if self.batcher is not None:
            self.batcher.close()
        self._workers.shutdown(wait=False, cancel_futures=True)

    def batching_counters(self) -> dict[str, int]:
        """The micro-batcher's counters (batches, requests, rows, expired); empty when it is off."""
        if self.batcher is None:
            return {}
        return {
            "batches": self.batcher.batches,
            "requests": self.batcher.requests,
            "rows": self.batcher.rows,
            "expired": self.batcher.expired,
        }

    # ------------------------------------------------------------------ submitting work
    def submit_recommend(
        self, histories: list[list[int]], n: int, timeout: float | None
    ) -> Future[CandidateList]:
        """Queue candidates for validated ``histories`` (micro-batched when on), due within ``timeout`` s."""
        if self.batcher is not None:
            return self.batcher.submit(histories, n, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._workers.submit(self.recommend, histories, n, deadline)

    def submit_positions(
        self, histories: Sequence[np.ndarray], k: int, deadline: float | None, with_scores: bool
    ) -> Future[list[PositionRows]]:
        """Queue :meth:`position_candidates` for ``histories`` on a worker thread."""
        return self._workers.submit(self.position_candidates, histories, k, deadline, with_scores)

    # ------------------------------------------------------------------ the work itself
    def recommend(self, histories: list[list[int]], n: int, deadline: float | None = None) -> CandidateList:
        """``source.recommend`` under the model lock, shape-checked and padded to ``[len, n]`` (worker or
        micro-batcher thread). A failure or a malformed result is ``INTERNAL``."""
        with self._holding_model(deadline):
            try:
                result = self.source.recommend(histories, n)
            except Exception as error:
                logger.exception("candidate source failed on %d histories", len(histories))
                message = f"candidate source failed: {type(error).__name__}: {error}"
                raise Refused(grpc.StatusCode.INTERNAL, message) from error
        try:
            return checked(result, len(histories), n)
        except ValueError as malformed:
            raise Refused(grpc.StatusCode.INTERNAL, str(malformed)) from None

    def position_candidates(
        self, histories: Sequence[np.ndarray], k: int, deadline: float | None, with_scores: bool = False
    ) -> list[PositionRows]:
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
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(histories[i]) for i in rows)
            padded = np.zeros((len(rows), width), dtype=np.int64)
            for row, index in enumerate(rows):
                padded[row, width - len(histories[index]) :] = histories[index]
            top, top_scores = self._position_batch(padded, k, deadline, scored)
            # Left padding: a history of length n sits in the last n columns. A k above the catalogue size
            # leaves the extra columns 0 (empty slots).
            for row, index in enumerate(rows):
                length = len(histories[index])
                out[index][:, : top.shape[2]] = top[row, width - length :]
                if out_scores is not None and top_scores is not None:
                    out_scores[index][:, : top.shape[2]] = top_scores[row, width - length :]
        return [(items, None if out_scores is None else out_scores[i]) for i, items in enumerate(out)]

    def _position_batch(
        self, padded: np.ndarray, k: int, deadline: float | None, scored: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One ``position_candidates`` (or ``position_candidate_scores``) call on left-padded histories under
        the model lock: ``[rows, width, <=k]`` items and, when ``scored``, their scores; ``INTERNAL`` when it
        fails or returns the wrong shapes."""
        rows, width = padded.shape
        top_scores = None
        # Not part of the CandidateSource protocol: position_source_problem checked that the source has it.
        source: Any = self.source
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
                logger.exception("position_candidates failed on %d histories", rows)
                message = f"position_candidates failed: {type(error).__name__}: {error}"
                raise Refused(grpc.StatusCode.INTERNAL, message) from error
        if top.ndim != 3 or top.shape[:2] != padded.shape or top.shape[2] > k:
            message = (
                f"position_candidates returned {tuple(top.shape)} for inputs {padded.shape} and k = {k} "
                f"(expected [{rows}, {width}, {k}])"
            )
            raise Refused(grpc.StatusCode.INTERNAL, message)
        if top_scores is not None and top_scores.shape != top.shape:
            message = f"position_candidate_scores gave scores {top_scores.shape} for items {top.shape}"
            raise Refused(grpc.StatusCode.INTERNAL, message)
        return top, top_scores

    @contextlib.contextmanager
    def _holding_model(self, deadline: float | None) -> Iterator[None]:
        """Hold the model lock (unless the source is thread-safe); ``DEADLINE_EXCEEDED`` when ``deadline``
        (``time.monotonic()``) passes first."""
        if deadline is not None and time.monotonic() > deadline:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, BUSY)
        if self._lock is None:
            yield
            return
        wait = -1 if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not self._lock.acquire(timeout=wait):
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, BUSY)
        try:
            yield
        finally:
            self._lock.release()
