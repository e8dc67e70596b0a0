"""The SRM's text part in the Flower app: the catalogue's text vectors reach every node once per version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_inprocess, write_pattern_dataset, write_pattern_text
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from lsc4rec.client.node import device_item_text
from lsc4rec.messages import (
    CONFIG,
    ITEM_TEXT,
    ITEM_TEXT_VERSION,
    compact_item_text_record,
    item_text_from_record,
    item_text_record,
    item_text_version,
)
from lsc4rec.text.compact import CompactItemVectors


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = write_pattern_dataset(tmp_path / "p.txt", num_users=160, num_items=60)
    write_pattern_text(path, 60)
    return path


@pytest.mark.slow
def test_text_vectors_go_to_each_node_once_and_the_model_trains_with_them(data: Path, tmp_path: Path) -> None:
    summary = run_inprocess(
        data, tmp_path / "run", 2, "model.item_text=projected", "federated.rounds=2", "train.lr=0.01"
    )
    text = summary["item_text"]
    # Round 1 sends the vectors to both nodes; round 2 and the evaluations send nothing more.
    assert text["bytes_sent"] == 2 * text["record_bytes"] > 0
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert rows[0]["item_text"]["item-text-nodes-updated"] == 2
    assert rows[1]["item_text"]["item-text-nodes-updated"] == 0
    state = torch.load(tmp_path / "run" / "model_last.pt")
    assert "item_text.projection.weight" in state and not any("vectors" in key for key in state)
    # The projection was trained by the nodes (it starts as the text's principal directions).
    assert summary["test"]["full"]["HR@10"] > 0.5


def _message(version: int, record: ArrayRecord | None) -> Message:
    content = RecordDict({CONFIG: ConfigRecord({ITEM_TEXT_VERSION: version})})
    if record is not None:
        content[ITEM_TEXT] = record
    return Message(content, dst_node_id=1, message_type="train")


def test_a_node_keeps_the_vectors_and_refuses_what_it_cannot_trust(task_identity: None) -> None:
    vectors = torch.randn(11, 4)
    vectors[0] = 0.0
    version = item_text_version(vectors)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    received, announced = device_item_text(_message(version, item_text_record(vectors)), context, 10)
    assert announced == version
    assert torch.allclose(received, vectors, atol=1e-2)  # float16 on the wire
    # Later messages only announce the version: the node's stored copy answers.
    again, _ = device_item_text(_message(version, None), context, 10)
    assert torch.equal(again, received)
    with pytest.raises(ValueError, match="holds another item-text version"):
        device_item_text(_message(version + 1, None), context, 10)
    with pytest.raises(ValueError, match="does not match the announced version"):
        device_item_text(_message(version + 1, item_text_record(vectors)), context, 10)
    empty = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="without sending it"):
        device_item_text(_message(version, None), empty, 10)
    with pytest.raises(ValueError, match=r"needs \[13, D\]"):
        item_text_from_record(item_text_record(vectors), 12)
    plain = Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=1, message_type="train")
    assert device_item_text(plain, empty, 10) is None  # no item text in this run


def test_the_compact_carrier_rebuilds_exactly_what_the_server_reads(task_identity: None) -> None:
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(41, 8, generator=generator)
    vectors[0] = 0.0
    vectors[9] = 0.0  # an item without text
    compact = CompactItemVectors.from_vectors(vectors, [4, 4], seed=0)
    server_side = compact.vectors()
    record = compact_item_text_record(compact)
    # The node rebuilds bit for bit what the server's model reads, so the announced version checks out.
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    version = item_text_version(server_side)
    received, _ = device_item_text(_message(version, record), context, 40)
    assert torch.equal(received, server_side)
    assert torch.count_nonzero(received[9]) == 0 and torch.count_nonzero(received[0]) == 0
    assert record.count_bytes() < item_text_record(vectors).count_bytes()
    broken = compact_item_text_record(compact)
    del broken["present"]
    with pytest.raises(ValueError, match="lacks centroids or 'present'"):
        item_text_from_record(broken, 40)


@pytest.mark.slow
def test_a_run_with_the_compact_carrier_sends_fewer_bytes_and_trains(data: Path, tmp_path: Path) -> None:
    summary = run_inprocess(
        data,
        tmp_path / "run",
        2,
        "model.item_text=projected",
        "federated.rounds=1",
        "train.lr=0.01",
        "federated.item_text_codes=[16,16]",
    )
    text = summary["item_text"]
    assert text["carrier"]["form"] == "codes" and text["carrier"]["sizes"] == [16, 16]
    assert text["record_bytes"] < text["carrier"]["bytes_float16_matrix"]
    assert text["bytes_sent"] == 2 * text["record_bytes"]
    assert summary["test"]["full"]["HR@10"] > 0.5
