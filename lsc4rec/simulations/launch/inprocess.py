"""An in-process Flower ``Grid``: the ServerApp loop drives the real ClientApp handlers in this process.

No SuperLink, no Ray, no subprocesses: every message goes through the same ClientApp a SuperNode would run
(its mods included), with per-node ``Context`` (``node_config`` with ``partition-id`` /
``num-partitions``, persistent ``state``) and the run config. A handler exception becomes an error reply, as
on a SuperNode; with ``send_and_receive`` a reply that takes longer than the round timeout is dropped, as a
timed-out node would be. ``push_messages`` queues messages and ``pull_messages`` runs the ones asked for, one
node after the other (the round loop's streaming aggregation pulls a few at a time): the round's deadline then
counts the nodes' time together, where on Flower they train side by side.
It is the fast, deterministic path for tests and debugging; real runs use ``flwr run``.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from lsc4rec.client.client_app import app

logger = logging.getLogger(__name__)

CLIENT_EXCEPTION_CODE = 1  # what a SuperNode reports for an exception inside a ClientApp


#: Run ids of this process's grids: the process id in the high bits, a counter in the low ones.
_RUN_IDS = itertools.count((os.getpid() << 20) + 1)


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp handler calls in this process (see the module docstring)."""

    def __init__(self, num_nodes: int, run_config: dict, run_id: int | None = None) -> None:
        """Create ``num_nodes`` nodes, node ``i`` hosting partition ``i`` of ``num_nodes``.

        ``run_id``: None gives each grid its own id, as a SuperLink gives each run one (nodes keep per-run
        files such as their ONNX graphs under it, which must not carry over from an earlier run)."""
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        if run_id is None:
            run_id = next(_RUN_IDS)
        # Messages read their sender identity from the task identity a SuperLink would set for the ServerApp.
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 0
        self._run_id = run_id
        self.contexts = {
            node_id: Context(
                run_id=run_id,
                node_id=node_id,
                node_config={"partition-id": node_id - 1, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for node_id in range(1, num_nodes + 1)
        }
        self._pending: dict[str, Message] = {}
        self._pushed = 0

    def set_run(self, run_id: int) -> None:
        """Runs are fixed at construction."""
        self._run_id = run_id

    @property
    def run(self):  # type: ignore[override]
        """The run id (a full ``Run`` object exists only on a SuperLink)."""
        return self._run_id

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A new instruction message."""
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        """The ids of the in-process nodes."""
        return list(self.contexts)

    def _deliver(self, message: Message) -> Message:
        try:
            return app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as exc:  # a node's crash becomes an error reply, as on a SuperNode
            logger.debug("node %d raised", message.metadata.dst_node_id, exc_info=True)
            return Message(Error(CLIENT_EXCEPTION_CODE, f"{type(exc).__name__}: {exc}"), reply_to=message)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Queue every message under a new message id (set on the message, as a SuperLink does); it runs
        when its reply is pulled."""
        ids = []
        for message in messages:
            self._pushed += 1
            message_id = f"in-process-{self._pushed}"
            message.metadata.__dict__["_message_id"] = message_id
            self._pending[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Run the queued messages among ``message_ids`` now and return their replies (each once)."""
        return [self._deliver(self._pending.pop(i)) for i in message_ids if i in self._pending]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Run every message; replies finishing after ``timeout`` seconds (per message) are dropped."""
        replies = []
        for message in messages:
            start = time.perf_counter()
            reply = self._deliver(message)
            if timeout is not None and time.perf_counter() - start > timeout:
                logger.debug("dropping the reply of node %d: past the timeout", message.metadata.dst_node_id)
                continue
            replies.append(reply)
        return replies
