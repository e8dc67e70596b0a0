"""Fault drills as a Flower client mod: exercise the server's handling of real failure modes.

``federated.faults`` names partitions that crash, answer late or send a malformed update, and partitions
that act hostile: a well-formed reply that attacks the aggregate (an update scaled or sign-flipped, a huge
claimed example count, non-finite values, or an honest-looking update trained on poisoned data). The mod
wraps the train handler, so the production handler itself carries no test code; poisoned data comes from
:func:`lsc4rec.client.poisoned_data.poisoned_shard`, which the node's data loader applies. Outside a drill
every message passes through untouched.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from lsc4rec.client.node import node_settings, partition_of
from lsc4rec.client.poisoned_data import is_hostile, listed
from lsc4rec.messages import ARRAYS, METRICS, NUM_EXAMPLES

__all__ = ["attacked", "fault_drill_mod", "malformed"]


def malformed(arrays: ArrayRecord) -> ArrayRecord:
    """Drop the last array and reshape the first: what a client with the wrong model version would send."""
    keys = list(arrays.keys())
    out = {key: arrays[key] for key in keys[:-1]}
    first = arrays[keys[0]].numpy()
    out[keys[0]] = Array(np.ascontiguousarray(first.reshape(-1)[: max(1, first.size // 2)]))
    return ArrayRecord(out)


def attacked(received: ArrayRecord, trained: ArrayRecord, attack: str, scale: float) -> ArrayRecord:
    """The weights a hostile node sends instead of ``trained``, its honest result from ``received``.

    ``scale``: received + scale × (trained − received); ``flip``: received − scale × (trained − received);
    ``nonfinite``: the honest weights with one NaN. Integer arrays (counters, masks) travel as trained.
    """
    factor = {"scale": scale, "flip": -scale}.get(attack)
    out: dict[str, Array] = {}
    for key in list(trained):
        weights = trained[key].numpy()
        if factor is not None and np.issubdtype(weights.dtype, np.floating):
            start = received[key].numpy().astype(np.float64)
            weights = (start + factor * (weights.astype(np.float64) - start)).astype(weights.dtype)
        out[key] = Array(np.ascontiguousarray(weights))
    if attack == "nonfinite":
        first = next(k for k in out if np.issubdtype(out[k].numpy().dtype, np.floating))
        weights = out[first].numpy().copy()
        weights.reshape(-1)[0] = np.nan
        out[first] = Array(weights)
    return ArrayRecord(out)


def fault_drill_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Delay, crash, corrupt or attack this node's reply when ``federated.faults`` lists its partition."""
    faults = node_settings(context).federated.faults
    partition_id, _ = partition_of(context)
    if listed(faults.delay, partition_id):
        time.sleep(faults.delay_seconds)
    if listed(faults.crash, partition_id):
        raise RuntimeError(f"partition {partition_id}: injected crash (federated.faults.crash)")
    reply = call_next(msg, context)
    if reply.has_error() or ARRAYS not in reply.content:
        return reply
    if listed(faults.malformed, partition_id):
        reply.content[ARRAYS] = malformed(reply.content.array_records[ARRAYS])
    if is_hostile(faults, partition_id) and faults.attack in ("scale", "flip", "nonfinite"):
        reply.content[ARRAYS] = attacked(
            msg.content.array_records[ARRAYS],
            reply.content.array_records[ARRAYS],
            faults.attack,
            faults.attack_scale,
        )
    if is_hostile(faults, partition_id) and faults.attack == "count":
        reply.content[METRICS][NUM_EXAMPLES] = float(faults.attack_examples)
    return reply
