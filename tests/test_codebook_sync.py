"""The global SOLID codebook through Flower: records, version stamping, statistics merging, the full loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import pattern_overrides, write_pattern_dataset, write_pattern_text
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from lsc4rec.client.codebook_sync import device_codebook
from lsc4rec.messages import (
    CODEBOOK,
    CODEBOOK_STATS,
    CODEBOOK_VERSION,
    codebook_from_record,
    codebook_record,
    statistics_from_record,
    statistics_record,
)
from lsc4rec.models.solid import SemanticCodebook
from lsc4rec.server.components.global_codebook import CodebookSync
from lsc4rec.server.federated_run import run_federated
from lsc4rec.settings import federated_settings_from_run_config
from lsc4rec.simulations.launch.inprocess import InProcessGrid


def codebook(seed: int = 0) -> SemanticCodebook:
    points = torch.randn(120, 4, generator=torch.Generator().manual_seed(seed))
    return SemanticCodebook.fit(points, [6, 2], seed=seed, iterations=3)


def outgoing(node: int) -> Message:
    return Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node, message_type="train"
    )


def reply_from(node: int, content: RecordDict) -> Message:
    """A reply as it arrives at the server from ``node``."""
    return Message(content, reply_to=outgoing(node))


pytestmark = pytest.mark.usefixtures("task_identity")


def test_records_round_trip_and_bad_statistics_are_named() -> None:
    book = codebook()
    back = codebook_from_record(codebook_record(book))
    assert back.version == book.version and torch.equal(back.centroids[1], book.centroids[1])
    stats = book.statistics(torch.randn(30, 4))
    parsed = statistics_from_record(statistics_record(stats), book)
    assert torch.equal(parsed.sums[0], stats.sums[0]) and torch.equal(parsed.counts[1], stats.counts[1])
    other = statistics_record(
        SemanticCodebook([torch.randn(5, 4), torch.randn(2, 4)]).statistics(torch.randn(9, 4))
    )
    with pytest.raises(ValueError, match="'counts_0' has shape"):
        statistics_from_record(other, book)


def test_codebook_goes_only_to_stale_nodes_and_updates_from_current_statistics() -> None:
    book = codebook()
    sync = CodebookSync(book)
    first = [outgoing(1), outgoing(2)]
    sent = sync.attach(first)
    assert sent["codebook-nodes-updated"] == 2 and sent["codebook-bytes-sent"] > 0
    assert all(
        CODEBOOK in m.content.array_records and m.content["config"][CODEBOOK_VERSION] == 0 for m in first
    )
    # Both nodes reply under version 0 with statistics of their own data.
    data = [torch.randn(40, 4, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    replies = [
        reply_from(
            node,
            RecordDict(
                {
                    "metrics": MetricRecord({"num-examples": 1.0, CODEBOOK_VERSION: 0}),
                    CODEBOOK_STATS: statistics_record(book.statistics(x)),
                }
            ),
        )
        for node, x in zip((1, 2), data, strict=True)
    ]
    stats, collected = sync.collect(replies)
    assert collected["codebook-stats-used"] == 2 and collected["codebook-stats-skipped"] == 0
    report = sync.update(1, stats)
    assert report["codebook-updated"] == 1 and sync.version == 1
    # Exactly the update of the pooled data.
    pooled, _ = book.updated(book.statistics(torch.cat(data)))
    assert torch.allclose(sync.codebook.centroids[0], pooled.centroids[0], atol=1e-5)
    # Next round: both nodes are stale again (version 1), a node that acknowledged it would get nothing.
    sync.node_versions[2] = 1
    second = [outgoing(1), outgoing(2)]
    assert sync.attach(second)["codebook-nodes-updated"] == 1
    assert CODEBOOK in second[0].content.array_records
    assert CODEBOOK not in second[1].content.array_records
    # Statistics computed under an old version are not mixed into the new one.
    late = reply_from(
        1,
        RecordDict(
            {
                "metrics": MetricRecord({"num-examples": 1.0, CODEBOOK_VERSION: 0}),
                CODEBOOK_STATS: statistics_record(book.statistics(data[0])),
            }
        ),
    )
    stats, collected = sync.collect([late])
    assert stats is None and collected["codebook-stats-skipped"] == 1


def test_device_keeps_its_copy_and_refuses_an_unannounced_version() -> None:
    book = codebook()
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    sync = CodebookSync(book)
    message = outgoing(1)
    sync.attach([message])
    assert device_codebook(message, context).version == 0
    sync.node_versions[1] = 0
    later = outgoing(1)
    sync.attach([later])
    assert CODEBOOK not in later.content.array_records
    assert device_codebook(later, context).version == 0  # from context.state
    later.content["config"][CODEBOOK_VERSION] = 5
    with pytest.raises(ValueError, match="holds codebook version 0 but the server announced 5"):
        device_codebook(later, context)
    fresh = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="holds none"):
        device_codebook(later, fresh)
    assert (
        device_codebook(
            Message(RecordDict({"config": ConfigRecord()}), dst_node_id=1, message_type="train"), context
        )
        is None
    )


@pytest.mark.slow
def test_federated_solid_syncs_a_text_built_codebook_and_learns(tmp_path: Path) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=160, num_items=40)
    write_pattern_text(data, 40)
    overrides = pattern_overrides(
        data,
        *[
            "model=solid",
            "model.hidden_size=16",
            "model.base_params.num_blocks=1",
            # The codebook joins item text and the global model's item table (SOLID / TIGER style).
            "solid.features=[text,embedding]",
            "solid.codebook_sizes=[8,2]",
            "text.progress=false",
            "federated.rounds=3",
            "federated.local_epochs=2",
        ],
    )
    run_config = {"overrides": overrides, "output-dir": str(tmp_path)}
    summary = run_federated(
        InProcessGrid(3, run_config), federated_settings_from_run_config(run_config), tmp_path / "run"
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = [row["codebook"] for row in metrics["rounds"]]
    # Round 1 sends the codebook to all 3 nodes for training; every round bumps the version by one.
    assert rows[0]["codebook-nodes-updated"] == 3 and rows[0]["codebook-stats-used"] == 3
    assert [row["codebook-version"] for row in rows] == [1, 2, 3]
    assert all(row["codebook-bytes-received"] > 0 and row["codebook-bytes-sent"] > 0 for row in rows)
    assert all(len(row["perplexity"]) == 2 for row in rows)
    assert summary["codebook"]["version"] == 3 and summary["failures"] == 0
    # Random ranking of 40 items gives HR@10 ~ 0.25; the pattern is learnable.
    assert summary["test"]["full"]["HR@10"] > 0.6, summary["test"]
