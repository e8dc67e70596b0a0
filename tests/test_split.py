"""IdMap and the leave-one-out split."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from lsc4rec.data import IdMap, RawDataset, leave_one_out, load_dataset


def hand_dataset() -> RawDataset:
    """Four users: two evaluable (4 and 3 items), one with 2 items, one with a single item."""
    return RawDataset(
        name="hand",
        source=Path("hand.txt"),
        user_ids=[10, 20, 30, 40],
        sequences=[[5, 6, 7, 8], [6, 9], [7, 5, 9], [8]],
    )


def test_leave_one_out_hand_example(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lsc4rec.data.split"):
        split = leave_one_out(hand_dataset())
    # Items numbered by first appearance: 5->1, 6->2, 7->3, 8->4, 9->5.
    assert split.item_map.raw_ids == [5, 6, 7, 8, 9]
    assert split.num_items == 5
    assert split.user_map.raw_ids == [10, 30]
    assert split.user_map.to_internal(30) == 1
    assert split.train == [[1, 2], [3]]
    assert split.valid_targets == [3, 1]
    assert split.test_targets == [4, 5]
    assert split.train_only == [[2, 5], [4]]
    assert split.train_only_users == [20, 40]
    assert split.valid_histories() == [[1, 2], [3]]
    assert split.test_histories() == [[1, 2, 3], [3, 1]]
    assert split.train_sequences() == [[1, 2], [3], [2, 5], [4]]
    assert split.train_sequences(include_valid=True) == [[1, 2, 3], [3, 1], [2, 5], [4]]
    full = [[1, 2, 3, 4], [3, 1, 5], [2, 5], [4]]
    assert split.train_sequences(include_valid=True, include_test=True) == full
    assert split.train_sequences(include_test=True) == full
    assert split.report == {
        "users_total": 4,
        "users_evaluated": 2,
        "users_too_short": 2,
        "users_single_interaction": 1,
        "items": 5,
        "interactions": 10,
        "mean_sequence_length": 2.5,
        "min_sequence_length": 1,
        "max_sequence_length": 4,
        "density": 0.5,
        "items_with_text": 0,
        "items_with_title": 0,
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("2 users with fewer than 3 interactions are train-only")


def test_validation_users_hold_out_only_their_validation_item() -> None:
    raw = RawDataset(
        name="six",
        source=Path("six.txt"),
        user_ids=list(range(6)),
        sequences=[[u * 10 + 1, u * 10 + 2, u * 10 + 3, u * 10 + 4] for u in range(6)],
    )
    split = leave_one_out(raw)
    assert split.validation_rows() == list(range(6))
    restricted = split.with_validation_users(2, seed=7)
    assert restricted.with_validation_users(2, seed=7).validation_users == restricted.validation_users
    held_out = restricted.validation_rows()
    assert len(held_out) == 2 and held_out == sorted(held_out)
    sequences = restricted.train_sequences()
    for user in range(6):
        expected = split.train[user] + ([] if user in held_out else [split.valid_targets[user]])
        assert sequences[user] == expected
    assert restricted.train_sequences(include_valid=True) == split.train_sequences(include_valid=True)
    assert restricted.test_histories() == split.test_histories()
    # A subset keeps the validation users it contains, renumbered; one without any is an error.
    others = [u for u in range(6) if u not in held_out]
    assert restricted.subset([held_out[1], others[0]]).validation_users == [0]
    with pytest.raises(ValueError, match="none of its 2 users is a validation user"):
        restricted.subset(others[:2])
    for bad in (0, 7):
        with pytest.raises(ValueError, match=f"six: validation_users={bad} must be between 1 and 6"):
            split.with_validation_users(bad, seed=0)


def test_accessors_return_copies() -> None:
    split = leave_one_out(hand_dataset())
    split.train_sequences()[0].append(99)
    split.valid_histories()[0].append(99)
    split.test_histories()[0].append(99)
    assert split.train[0] == [1, 2]


def test_no_warning_when_every_user_is_long_enough(caplog: pytest.LogCaptureFixture) -> None:
    raw = RawDataset(name="ok", source=Path("ok.txt"), user_ids=[1, 2], sequences=[[3, 4, 5], [5, 6, 7, 3]])
    with caplog.at_level(logging.WARNING, logger="lsc4rec.data.split"):
        split = leave_one_out(raw)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert split.report["users_too_short"] == 0
    assert split.train_only == []
    assert split.train == [[1], [3, 4]]


def test_leave_one_out_rejects_unparallel_lists() -> None:
    raw = RawDataset(name="bad", source=Path("bad.txt"), user_ids=[1, 2], sequences=[[3, 4, 5]])
    with pytest.raises(ValueError, match="2 user ids but 1 sequences"):
        leave_one_out(raw)


def test_id_map_round_trip_and_first_seen_order() -> None:
    raw_ids = [42, 7, 42, 1000, 7, -3, 5]
    item_map = IdMap.build(raw_ids, start=1, kind="item")
    assert len(item_map) == 5
    assert item_map.raw_ids == [42, 7, 1000, -3, 5]
    assert [item_map.to_internal(x) for x in (42, 7, 1000, -3, 5)] == [1, 2, 3, 4, 5]
    assert all(item_map.to_raw(item_map.to_internal(x)) == x for x in raw_ids)
    assert all(item_map.to_internal(item_map.to_raw(i)) == i for i in range(1, 6))
    assert 1000 in item_map and 8 not in item_map
    many = item_map.to_internal_many(np.array([[5, 42], [-3, 7]]))
    assert many.dtype == np.int64 and many.tolist() == [[5, 1], [4, 2]]
    assert item_map.to_raw_many(many).tolist() == [[5, 42], [-3, 7]]
    assert item_map.to_internal_many([]).tolist() == []
    user_map = IdMap.build([9, 8], start=0, kind="user")
    assert user_map.to_internal_many([8, 9]).tolist() == [1, 0]
    assert user_map.to_raw_many([0, 1]).tolist() == [9, 8]
    assert IdMap.build([42, 7, 1000, -3, 5]) == item_map
    assert IdMap.build([7, 42]) != IdMap.build([42, 7])


def test_id_map_unknown_ids_raise_key_error() -> None:
    item_map = IdMap.build([3, 4], start=1, kind="item")
    with pytest.raises(KeyError, match="raw item id 9 is not in the item map"):
        item_map.to_internal(9)
    with pytest.raises(KeyError, match="raw item id 9 is not in the item map"):
        item_map.to_internal_many([3, 9, 4])
    with pytest.raises(KeyError, match=re.escape("internal item id 0 is outside 1..2")):
        item_map.to_raw(0)
    with pytest.raises(KeyError, match=re.escape("internal item id 3 is outside 1..2")):
        item_map.to_raw_many([1, 3])
    with pytest.raises(KeyError, match="not in the empty user map"):
        IdMap.build([], start=0, kind="user").to_internal_many([1])


def test_beauty_split_report() -> None:
    # How long loading and splitting take is a benchmark's question (benchmarks/, not a timed test).
    split = leave_one_out(load_dataset("beauty"))
    report = split.report
    assert report["users_total"] == report["users_evaluated"] == 22_363
    assert report["users_too_short"] == 0
    assert report["items"] == split.num_items == 12_101
    assert report["interactions"] == 198_502
    assert (report["min_sequence_length"], report["max_sequence_length"]) == (5, 204)
    assert report["mean_sequence_length"] == pytest.approx(8.8764, abs=1e-4)
    assert len(split.train) == len(split.valid_targets) == len(split.test_targets) == 22_363
    assert sum(map(len, split.train)) == 198_502 - 2 * 22_363
    # Round trip of every item through the map.
    raw_items = np.array(split.item_map.raw_ids)
    assert (split.item_map.to_raw_many(split.item_map.to_internal_many(raw_items)) == raw_items).all()
