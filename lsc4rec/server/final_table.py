"""The run's final table, measured on the devices: device alone, collaborative, cloud alone, on the test item.

After the last round the server sends the last round's SRM (what the devices hold when the run ends) to every
node once more, with ``phase=test``. Each node ranks its devices' test items with it (through ONNX Runtime
when ``runtime=onnx``) and, with the cloud on, fuses it with the cloud's stale lists of the test moment with
no requests, within the request budget and with every device requesting, and reports the cloud's list alone.
The server averages the nodes' replies (device-weighted) into the table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from lsc4rec.messages import PHASE, PHASE_TEST
from lsc4rec.server.components.loop_hooks import LoopExtension
from lsc4rec.server.reply_stream import exchange
from lsc4rec.strategies.loop_strategy import LoopStrategy

__all__ = ["FINAL_TABLE_ROWS", "final_table", "test_on_devices"]

logger = logging.getLogger(__name__)

#: Rows of the final table: (label, metric prefix in the nodes' test replies, request-rate key or None).
FINAL_TABLE_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("device alone", "test-device-", None),
    ("collaborative, no requests", "test-collab-none-", None),
    ("collaborative, request budget", "test-collab-budget-", "test-budget-request-rate"),
    ("collaborative, every device requests", "test-collab-all-", "test-all-request-rate"),
    ("cloud alone (its stale list)", "test-cloud-", None),
    # The server's test of the warm-started model, before any device data: what the devices' rounds added.
    ("cloud's warm start alone (no device data)", "test-warm-start-", None),
)


#: Rows the devices' private training has no part in (the cloud's list, the model before any device data).
_NOT_FROM_DEVICES = ("test-cloud-", "test-warm-start-")


def test_on_devices(
    grid: Grid,
    strategy: LoopStrategy,
    arrays: ArrayRecord,
    extensions: Sequence[LoopExtension],
    rounds: int,
    timeout: float,
    window: int | None = None,
) -> dict[str, float]:
    """Send ``arrays`` to the nodes in the test phase; return their device-weighted mean test metrics."""
    config = ConfigRecord({k: v for e in extensions for k, v in e.test_config().items()})
    config[PHASE] = PHASE_TEST
    messages = list(strategy.configure_evaluate(rounds, arrays, config, grid))
    for extension in extensions:
        extension.attach(messages, "evaluate")
    replies = exchange(grid, messages, timeout, window)
    metrics = strategy.aggregate_evaluate(rounds, replies)
    return dict(metrics or {})


def final_table(
    metrics: dict[str, float], metric: str = "NDCG@10", privacy: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The table's rows present in ``metrics``: label, ``metric``, HR@10, and the request rate.

    ``privacy`` (the run's privacy summary, DP on): the rows the devices' model made also carry the ε every
    device has spent (local DP: the largest of any device's ledger; central DP: the run's) and its δ.
    """
    spent = privacy.get("epsilon") if privacy else None
    rows = []
    for label, prefix, rate in FINAL_TABLE_ROWS:
        if f"{prefix}{metric}" not in metrics:
            continue
        row = {"setting": label, metric: metrics[f"{prefix}{metric}"], "HR@10": metrics.get(f"{prefix}HR@10")}
        if rate is not None:
            row["request_rate"] = metrics.get(rate)
        if spent is not None and prefix not in _NOT_FROM_DEVICES:
            row["epsilon"] = float(spent)
            row["delta"] = privacy.get("delta")  # type: ignore[union-attr]  # spent implies privacy
        rows.append(row)
    return rows


def log_final_table(rows: list[dict[str, Any]], metric: str = "NDCG@10") -> None:
    """The final table as log lines, one per row."""
    logger.info("final table on the test items (devices, last round's model):")
    for row in rows:
        rate = (
            f", {row['request_rate']:.0%} of devices request" if row.get("request_rate") is not None else ""
        )
        spent = f", every device's ε ≤ {row['epsilon']:.2f}" if row.get("epsilon") is not None else ""
        logger.info("  %-40s %s %.4f%s%s", row["setting"], metric, row[metric], rate, spent)
