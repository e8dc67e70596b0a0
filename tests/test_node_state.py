"""A node's saved state: each record once on disk however many rounds and nodes hold it, read back exactly."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from lsc4rec.client.node_state import load_node_state, save_node_state

CATALOGUE = np.random.default_rng(0).standard_normal((500, 64)).astype(np.float32)  # 128 KB, public


def node_state(partition: int, server_round: int) -> RecordDict:
    """A node's state: the public catalogue (the same everywhere) and its own moments and counters."""
    moments = np.full((50, 8), 100 * partition + server_round, dtype=np.float32)
    return RecordDict(
        {
            "item-text": ArrayRecord({"vectors": Array(CATALOGUE)}),
            "optimizer": ArrayRecord({"exp_avg": Array(moments)}),
            "node": ConfigRecord({"rounds-trained": server_round, "partition": partition}),
        }
    )


def assert_same_state(actual: RecordDict, expected: RecordDict) -> None:
    assert sorted(actual.keys()) == sorted(expected.keys())
    for key, record in expected.items():
        if isinstance(record, ArrayRecord):
            for name, array in record.items():
                np.testing.assert_array_equal(actual[key][name].numpy(), array.numpy())
        else:
            assert dict(actual[key]) == dict(record)


def files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def distinct_bytes(root: Path) -> int:
    """Bytes on disk under ``root``, a file with several names (hard links) counted once."""
    inodes = {path.stat().st_ino: path.stat().st_size for path in files_under(root)}
    return sum(inodes.values())


def test_the_catalogue_every_node_saves_every_round_is_on_disk_once(tmp_path: Path) -> None:
    root = tmp_path / "node-state"
    for server_round in (1, 2, 3, 4):
        for partition in range(3):
            directory = root / f"partition-{partition}"
            save_node_state(node_state(partition, server_round), directory, server_round)
    catalogue_bytes = CATALOGUE.nbytes
    # Three nodes, two kept rounds each: six states that each hold the catalogue, one copy of it on disk.
    assert catalogue_bytes < distinct_bytes(root) < 2 * catalogue_bytes
    for partition in range(3):
        directory = root / f"partition-{partition}"
        assert sorted(p.name for p in directory.glob("round-*.state")) == ["round-3.state", "round-4.state"]
        loaded, saved_round = load_node_state(directory, before_round=5)
        assert saved_round == 4
        assert_same_state(loaded, node_state(partition, 4))
        loaded, saved_round = load_node_state(directory, before_round=4)
        assert saved_round == 3
        assert_same_state(loaded, node_state(partition, 3))


def test_records_of_dropped_rounds_leave_the_disk(tmp_path: Path) -> None:
    root = tmp_path / "node-state"
    for server_round in range(1, 9):
        save_node_state(node_state(0, server_round), root / "partition-0", server_round)
    # Kept: the catalogue, two rounds' moments, two rounds' counters, in the partition and in the index.
    assert len(list((root / "partition-0" / "records").iterdir())) == 5
    assert len(list((root / "records").iterdir())) == 5
    # The dropped rounds' moments are gone everywhere: the disk holds 5 files' bytes.
    assert distinct_bytes(root) < CATALOGUE.nbytes + 4 * 50 * 8 * 4 + 4096


def test_a_node_dropping_a_shared_record_leaves_the_others_copy(tmp_path: Path) -> None:
    root = tmp_path / "node-state"
    save_node_state(node_state(0, 1), root / "partition-0", 1)
    save_node_state(node_state(1, 1), root / "partition-1", 1)
    # Node 0 moves on to another catalogue (new items): its old one leaves its folder and the index.
    changed = node_state(0, 3)
    changed["item-text"] = ArrayRecord({"vectors": Array(CATALOGUE[:100] + 1.0)})
    save_node_state(changed, root / "partition-0", 3)
    loaded, _ = load_node_state(root / "partition-1", before_round=2)
    assert_same_state(loaded, node_state(1, 1))
    # A node saving the old catalogue again after the index forgot it writes it afresh and reads it back.
    save_node_state(node_state(2, 3), root / "partition-2", 3)
    loaded, _ = load_node_state(root / "partition-2", before_round=4)
    assert_same_state(loaded, node_state(2, 3))


def test_without_hard_links_each_node_keeps_its_own_copy(tmp_path: Path, monkeypatch) -> None:
    def no_links(source, target) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))

    monkeypatch.setattr(os, "link", no_links)
    root = tmp_path / "node-state"
    for partition in range(2):
        save_node_state(node_state(partition, 1), root / f"partition-{partition}", 1)
    assert distinct_bytes(root) > 2 * CATALOGUE.nbytes
    for partition in range(2):
        loaded, _ = load_node_state(root / f"partition-{partition}", before_round=2)
        assert_same_state(loaded, node_state(partition, 1))


def test_a_state_saved_whole_by_an_earlier_version_still_loads(tmp_path: Path) -> None:
    directory = tmp_path / "partition-0"
    directory.mkdir()
    state = node_state(0, 2)
    (directory / "round-2.state").write_bytes(recorddict_to_proto(state).SerializeToString())
    loaded, saved_round = load_node_state(directory, before_round=3)
    assert saved_round == 2
    assert_same_state(loaded, state)


def test_a_damaged_record_makes_the_node_start_empty_with_a_warning(tmp_path: Path, caplog) -> None:
    directory = tmp_path / "partition-0"
    save_node_state(node_state(0, 1), directory, 1)
    biggest = max((directory / "records").iterdir(), key=lambda path: path.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.unlink()  # a new file: the damage must not reach the index's name for it
    biggest.write_bytes(bytes(data))
    assert load_node_state(directory, before_round=2) is None
    assert "unreadable" in caplog.text and "damaged" in caplog.text
