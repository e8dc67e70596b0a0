"""Replies as they arrive: push a round's instructions, pull the replies a few at a time until the deadline.

Flower's ``Grid.send_and_receive`` returns every reply of a round at once; a round of 1,000 nodes answering
with 7 MB each then needs 7 GB on the ServerApp. :func:`stream_replies` pushes the instructions
(``grid.push_messages``) and polls ``grid.pull_messages`` with at most :data:`PULL_CHUNK` message ids per
call, so no more than that many replies arrive together; each goes to ``consume`` (the strategy's fold,
:mod:`lsc4rec.strategies.train_fold`) and only what ``consume`` returns is kept. Timing is Flower's: every
reply pulled before ``timeout`` seconds after the push counts, the rest are left at the SuperLink (the fold
names those nodes as failures, as the whole-round path does).

**A window of instructions in flight** (``window``, :func:`dispatch_window`): Flower's simulation runtime
feeds its workers by asking its in-memory state, every 0.1 s, for one message per node, and each of those
lookups scans every instruction the state holds; with N nodes and N instructions pushed at once a pass costs
N² checks (measured in Flower 1.42, another run sharing the cores: 2.4–4.8 s for 1,000 of each, twice that
once all are delivered but not yet answered), under the state's lock and the process's GIL, which the
ServerApp and the workers' replies wait on. With a window only that many instructions are pushed at first and
one more each time a reply arrives, so a pass costs N × window checks. The nodes' results do not depend on the
order in which they run; the round's deadline counts from the first push, and an instruction still unsent at
the deadline is a node that did not answer.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["PULL_CHUNK", "PULL_INTERVAL", "dispatch_window", "exchange", "stream_replies"]

#: Message ids per ``pull_messages`` call: at most this many replies are held before they are folded.
PULL_CHUNK = 16
#: Seconds between polls while replies arrive slower than a chunk per poll.
PULL_INTERVAL = 1.0


#: Instructions in flight per CPU of this machine when the window is chosen for Flower's simulation runtime.
WINDOW_PER_CPU = 8
#: The smallest window chosen for it.
MIN_WINDOW = 16


def dispatch_window(grid: Grid | None, configured: int | None) -> int | None:
    """Instructions in flight at most (None: all at once), from ``federated.dispatch_window``.

    ``configured`` 0 pushes all at once, a positive value is the window, and None chooses: a window of
    :data:`WINDOW_PER_CPU` per CPU (at least :data:`MIN_WINDOW`) under Flower's simulation runtime (its
    in-memory grid, whose feeder scans every pending instruction per node), all at once elsewhere (real
    SuperNodes each pull their own message and work in parallel; the in-process grid runs what is pulled;
    no grid at all).
    """
    if configured is not None:
        return configured or None
    from flwr.superlink.grid import InMemoryGrid

    if not isinstance(grid, InMemoryGrid):
        return None
    return max(MIN_WINDOW, WINDOW_PER_CPU * (os.cpu_count() or 1))


def stream_replies(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float | None,
    consume: Callable[[Message], Message],
    chunk: int = PULL_CHUNK,
    interval: float = PULL_INTERVAL,
    window: int | None = None,
) -> list[Message]:
    """Push ``messages`` (at most ``window`` unanswered at a time; None: all at once), pass each reply to
    ``consume`` as it arrives, return what ``consume`` returned (arrival order); stop when every message is
    answered or ``timeout`` seconds (None: no limit) passed."""
    unsent = iter(messages)
    pending: dict[str, None] = {}
    deadline = None if timeout is None else time.monotonic() + timeout

    def remaining() -> float:
        return float("inf") if deadline is None else deadline - time.monotonic()

    def push_more() -> None:
        # Until the window is full or nothing is left: a message the grid refuses (no id) frees its place.
        while window is None or len(pending) < window:
            batch = list(itertools.islice(unsent, None if window is None else window - len(pending)))
            if not batch:
                return
            pending.update(dict.fromkeys(str(message_id) for message_id in grid.push_messages(batch)))

    push_more()
    kept: list[Message] = []
    while pending and remaining() > 0:
        arrived = 0
        ids = list(pending)
        for start in range(0, len(ids), chunk):
            for reply in grid.pull_messages(ids[start : start + chunk]):
                pending.pop(reply.metadata.reply_to_message_id, None)
                kept.append(consume(reply))
                arrived += 1
            if remaining() <= 0:
                break
        if remaining() > 0:
            push_more()
        if pending and arrived < chunk:
            # Fewer than a chunk arrived during the pass: no backlog, so wait before polling again. (In a
            # simulation the ServerApp shares its process, and the GIL, with the engine that runs the nodes;
            # polling 1,000 pending ids without a pause takes time from it.)
            time.sleep(max(0.0, min(interval, remaining())))
    return kept


def exchange(grid: Grid, messages: Iterable[Message], timeout: float, window: int | None) -> list[Message]:
    """Every reply to ``messages`` within ``timeout``: Flower's ``send_and_receive`` without a window, the
    windowed stream (:func:`stream_replies`, replies kept as they are) with one."""
    if window is None:
        return list(grid.send_and_receive(messages, timeout=timeout))
    return stream_replies(grid, messages, timeout, lambda reply: reply, window=window)
