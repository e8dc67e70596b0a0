"""What the candidate service accepts: request checks with messages naming the field and value, message-size
limits derived from the service's limits, the stored-history snapshot, and the shape check of a reply.

Every ``*_problem`` function returns why its input is refused (a message for ``INVALID_ARGUMENT``), or None.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lsc4rec.models.llm.candidates import CandidateList, CandidateSource

__all__ = [
    "BUSY",
    "FLOAT_BYTES",
    "MAX_REQUEST_ID",
    "MAX_VARINT_BYTES",
    "checked",
    "history_problem",
    "message_limit",
    "position_source_problem",
    "range_problem",
    "request_id_problem",
    "stored_histories",
    "user_problem",
]

#: Longest ``request_id`` (characters): it is echoed in every reply of a batch and written to the logs.
MAX_REQUEST_ID = 128

# Wire-size bounds used to derive the gRPC message limits: an int64 varint takes at most 10 bytes (negative
# ids take all 10, and those must still reach validation to get a precise error); a float takes 4.
MAX_VARINT_BYTES = 10
FLOAT_BYTES = 4
# Tags, length prefixes, n, request_id (up to 4 bytes per character) and the other small fields, per
# history/reply and per message.
_PER_ENTRY_OVERHEAD = 64 + 4 * MAX_REQUEST_ID
_PER_MESSAGE_OVERHEAD = 4096
_MIN_MESSAGE_LIMIT = 1 << 20


def message_limit(entries: int, bytes_per_entry: int, payload: int = 0) -> int:
    """A message limit twice the largest valid message, so a slightly bad request still gets a precise
    ``INVALID_ARGUMENT`` instead of gRPC's generic ``RESOURCE_EXHAUSTED``, but never below 1 MiB.

    The largest message has ``entries`` entries of ``bytes_per_entry`` each plus ``payload`` bytes shared
    among them (e.g. a bound on all the ids of a reply together).
    """
    largest = entries * (bytes_per_entry + _PER_ENTRY_OVERHEAD) + payload + _PER_MESSAGE_OVERHEAD
    return max(_MIN_MESSAGE_LIMIT, 2 * largest)


def stored_histories(
    histories: Sequence[Sequence[int]], num_items: int, max_history: int
) -> tuple[np.ndarray, ...]:
    """An immutable copy of per-user ``histories``: the last ``max_history`` items of each as int64.

    Only those items are ever read (longer stored histories are cut, not refused, as the cloud's own data),
    so nothing more is kept. Raises ValueError naming the first user and position whose id is not an item id
    (``1..num_items``); an empty history is allowed (the user has no stored interactions yet).
    """
    stored = []
    for user, history in enumerate(histories):
        ids = np.asarray(history, dtype=np.int64).reshape(-1)
        bad = np.flatnonzero((ids < 1) | (ids > num_items))
        if bad.size:
            first = int(bad[0])
            raise ValueError(
                f"user_histories[{user}][{first}] = {int(ids[first])} is not an item id "
                f"(valid ids are 1..{num_items})"
            )
        # A copy even when nothing is cut: the caller may go on mutating its own arrays.
        kept = ids[-max_history:].copy()
        kept.setflags(write=False)
        stored.append(kept)
    return tuple(stored)


def history_problem(history: Sequence[int], field: str, num_items: int, max_history: int) -> str | None:
    """Why ``history`` is not acceptable (a message naming ``field`` and the bad value), or None if it is."""
    if len(history) == 0:
        return f"{field} is empty: at least one item id is required"
    if len(history) > max_history:
        return f"{field} has {len(history)} items, more than max_history = {max_history}"
    ids = np.fromiter(history, dtype=np.int64, count=len(history))
    bad = np.flatnonzero((ids < 1) | (ids > num_items))
    if bad.size:
        first = int(bad[0])
        more = f" ({bad.size} unknown ids in total)" if bad.size > 1 else ""
        return f"{field}[{first}] = {int(ids[first])} is not an item id (valid ids are 1..{num_items}){more}"
    return None


#: Why a call that waited for the model past its deadline is refused (lock or micro-batch queue).
BUSY = "deadline expired while waiting for the model (service busy)"


def checked(result: CandidateList, rows: int, n: int) -> CandidateList:
    """``result`` as exactly ``[rows, n]``: fewer columns are padded with empty slots; anything else malformed
    is a ValueError naming the shapes."""
    items = np.asarray(result.items, dtype=np.int64)
    scores = np.asarray(result.scores, dtype=np.float32)
    if items.ndim != 2 or items.shape != scores.shape or items.shape[0] != rows or items.shape[1] > n:
        raise ValueError(
            f"candidate source returned items {items.shape} / scores {scores.shape} for {rows} histories "
            f"and n = {n} (expected [{rows}, {n}])"
        )
    if items.shape[1] < n:
        missing = n - items.shape[1]
        items = np.pad(items, ((0, 0), (0, missing)), constant_values=0)
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
    return CandidateList(items, scores)


def request_id_problem(request_id: str) -> str | None:
    """Why ``request_id`` is not acceptable (too long to echo and log), or None."""
    if len(request_id) > MAX_REQUEST_ID:
        return f"request_id has {len(request_id)} characters, more than {MAX_REQUEST_ID}"
    return None


def range_problem(field: str, value: int, maximum: int) -> str | None:
    """Why ``field`` = ``value`` is outside ``1..maximum`` (a message naming both), or None. Proto3 sends an
    unset field as 0, hence the hint."""
    if 1 <= value <= maximum:
        return None
    hint = f" ({field} was not set?)" if value == 0 else ""
    return f"{field} = {value} is outside 1..{maximum}{hint}"


def user_problem(user_ids: Sequence[int], known: int) -> str | None:
    """Why ``user_ids`` names a user outside the store's ``0..known-1``, or None."""
    bad = next((i for i, u in enumerate(user_ids) if not 0 <= u < known), None)
    if bad is None:
        return None
    return f"user_ids[{bad}] = {user_ids[bad]} is not a known user (0..{known - 1})"


def position_source_problem(source: CandidateSource) -> str | None:
    """Why ``source`` cannot answer ``PositionCandidatesForUsers``, or None.

    Duck-typed like the rest of the service (any source with ``position_candidates``); a
    :class:`~lsc4rec.models.llm.recommender.CloudLLM` also needs one token per item read as item tokens,
    which is checked here so the caller gets ``UNIMPLEMENTED`` rather than an ``INTERNAL`` from its
    ValueError.
    """
    name = type(source).__name__
    if not callable(getattr(source, "position_candidates", None)):
        return (
            f"the model behind this service ({name}) has no position_candidates: per-position candidates "
            "need the cloud LLM (CloudLLM)"
        )
    tokenizer = getattr(source, "tokenizer", None)
    if getattr(tokenizer, "depth", 1) != 1 or getattr(source, "prompt", None) is not None:
        return (
            f"the model behind this service ({name}) cannot score positions: position_candidates needs one "
            "token per item read as item tokens (llm.item_tokens=item, llm.history_format=items)"
        )
    return None
