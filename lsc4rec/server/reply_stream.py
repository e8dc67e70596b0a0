"""Replies as they arrive: push a round's instructions, pull the replies a few at a time until the deadline.

Flower's ``Grid.send_and_receive`` returns every reply of a round at once; a round of 1,000 nodes answering
with 7 MB each then needs 7 GB on the ServerApp. :func:`stream_replies` pushes the instructions
(``grid.push_messages``) and polls ``grid.pull_messages`` with at most :data:`PULL_CHUNK` message ids per
call, so no more than that many replies arrive together; each goes to ``consume`` (the strategy's fold,
:mod:`lsc4rec.strategies.train_fold`) and only what ``consume`` returns is kept. Timing is Flower's: every
reply pulled before ``timeout`` seconds after the push counts, the rest are left at the SuperLink (the fold
names those nodes as failures, as the whole-round path does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["PULL_CHUNK", "PULL_INTERVAL", "stream_replies"]

#: Message ids per ``pull_messages`` call: at most this many replies are held before they are folded.
PULL_CHUNK = 16
#: Seconds between polls while replies arrive slower than a chunk per poll.
PULL_INTERVAL = 1.0


def stream_replies(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float | None,
    consume: Callable[[Message], Message],
    chunk: int = PULL_CHUNK,
    interval: float = PULL_INTERVAL,
) -> list[Message]:
    """Push ``messages``, pass each reply to ``consume`` as it arrives, return what ``consume`` returned
    (arrival order); stop when every message is answered or ``timeout`` seconds (None: no limit) passed."""
    pending = dict.fromkeys(str(message_id) for message_id in grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout

    def remaining() -> float:
        return float("inf") if deadline is None else deadline - time.monotonic()

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
        if pending and arrived < chunk:
            # Fewer than a chunk arrived during the pass: no backlog, so wait before polling again. (In a
            # simulation the ServerApp shares its process, and the GIL, with the engine that runs the nodes;
            # polling 1,000 pending ids without a pause takes time from it.)
            time.sleep(max(0.0, min(interval, remaining())))
    return kept
