"""Privacy figures in the nodes' replies: budget stops and ε over devices (shared by the strategies)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message

from lsc4rec.messages import DEVICES, EPSILON, METRICS, PRIVACY_EXHAUSTED


def is_privacy_stop(reply: Message) -> bool:
    """True for a reply from a node that refused to train because its privacy budget is spent."""
    if reply.has_error():
        return False
    metrics = reply.content.metric_records.get(METRICS)
    return metrics is not None and float(metrics.get(PRIVACY_EXHAUSTED, 0.0)) > 0


def local_privacy_metrics(replies: Iterable[Message]) -> dict[str, float]:
    """ε over the devices of the replying nodes (local DP): ``epsilon`` = ``epsilon-max`` and the
    device-weighted ``epsilon-mean``.

    Every device on a node shares the node's DP-SGD mechanism, so a node's ε is each of its devices' ε; nodes
    that stopped for budget still count (their devices keep the ε they spent). Empty without ε metrics.
    """
    pairs = []
    # Node-id order: the mean's float sum then does not depend on the order the replies arrived in.
    for reply in sorted(replies, key=lambda reply: reply.metadata.src_node_id):
        if reply.has_error():
            continue
        metrics = reply.content.metric_records.get(METRICS)
        if metrics is not None and EPSILON in metrics:
            pairs.append((float(metrics[EPSILON]), float(metrics.get(DEVICES, 1.0))))
    if not pairs:
        return {}
    devices = sum(d for _, d in pairs)
    worst = max(e for e, _ in pairs)
    return {
        # "epsilon" is the guarantee every device has: the worst one's.
        "epsilon": worst,
        "epsilon-max": worst,
        "epsilon-mean": sum(e * d for e, d in pairs) / max(devices, 1.0),
    }
