"""Fault drills as a Flower client mod: exercise the server's handling of real failure modes.

``federated.faults`` names partitions that crash, answer late or send a malformed update; the mod wraps the
train handler, so the production handler itself carries no test code. Outside a drill every message passes
through untouched.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from lsc4rec.client.node import node_settings, partition_of
from lsc4rec.messages import ARRAYS

__all__ = ["fault_drill_mod", "malformed"]


def _listed(value: str, partition_id: int) -> bool:
    listed = str(value).replace(" ", "")
    return bool(listed) and str(partition_id) in listed.split(",")


def malformed(arrays: ArrayRecord) -> ArrayRecord:
    """Drop the last array and reshape the first: what a client with the wrong model version would send."""
    keys = list(arrays.keys())
    out = {key: arrays[key] for key in keys[:-1]}
    first = arrays[keys[0]].numpy()
    out[keys[0]] = Array(np.ascontiguousarray(first.reshape(-1)[: max(1, first.size // 2)]))
    return ArrayRecord(out)


def fault_drill_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Delay, crash or corrupt this node's reply when ``federated.faults`` lists its partition."""
    faults = node_settings(context).federated.faults
    partition_id, _ = partition_of(context)
    if _listed(faults.delay, partition_id):
        time.sleep(faults.delay_seconds)
    if _listed(faults.crash, partition_id):
        raise RuntimeError(f"partition {partition_id}: injected crash (federated.faults.crash)")
    reply = call_next(msg, context)
    if _listed(faults.malformed, partition_id) and not reply.has_error() and ARRAYS in reply.content:
        reply.content[ARRAYS] = malformed(reply.content.array_records[ARRAYS])
    return reply
