"""RecBole atomic files (``X.inter``, ``X.item``): token ids, time order, the k-core, item text, errors."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_ML100K

from lsc4rec.data import DataFileNotFoundError, DataFormatError, leave_one_out, load_dataset, read_movielens
from lsc4rec.data.readers import detect_format, load_raw, read_recbole
from lsc4rec.data.recbole import kcore_filter, resolve_inter_file

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def where(path: Path, line: int | None = None) -> str:
    """Regex for the 'file line N:' prefix of a DataFormatError message."""
    return re.escape(f"{path} line {line}:" if line is not None else f"{path}:")


def atomic(folder: Path, name: str, header: str, rows: list[str], suffix: str = ".inter") -> Path:
    """Write ``folder/name<suffix>``: the header, then one tab-separated row per entry."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{suffix}"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def inter(folder: Path, rows: list[tuple[str, str, float]], name: str = "shop") -> Path:
    """``X.inter`` with user, item, rating 5 and timestamp columns."""
    return atomic(folder, name, INTER_HEADER, [f"{u}\t{i}\t5\t{t:g}" for u, i, t in rows])


# --- ids and order -----------------------------------------------------------------------------------------


def test_tokens_are_numbered_in_order_of_first_appearance_after_sorting(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    rows = [("A9", "B00X", 30), ("A1", "B00Z", 5), ("A9", "B00Y", 10), ("A1", "B00X", 1), ("A9", "B00Z", 20)]
    inter(folder, rows)
    raw = read_recbole(folder)
    assert raw.name == "shop" and raw.source == folder / "shop.inter"
    # Users in file order; items as first met in the time-sorted sequences (A9: Y, Z, X; then A1: X, Z).
    assert raw.user_ids == [1, 2]
    assert raw.user_tokens == {1: "A9", 2: "A1"}
    assert raw.item_tokens == {1: "B00Y", 2: "B00Z", 3: "B00X"}
    assert raw.sequences == [[1, 2, 3], [3, 2]]
    assert raw.timestamps == [[10.0, 20.0, 30.0], [1.0, 5.0]]


def test_time_ties_keep_file_order_and_no_timestamp_means_file_order(tmp_path: Path) -> None:
    tied = inter(tmp_path / "a", [("u", "late", 9), ("u", "x", 3), ("u", "y", 3), ("u", "early", 1)])
    raw = read_recbole(tied)
    assert [[raw.item_tokens[i] for i in seq] for seq in raw.sequences] == [["early", "x", "y", "late"]]
    plain = atomic(tmp_path / "b", "b", "user_id:token\titem_id:token", ["u\tc", "v\ta", "u\tb", "u\tc"])
    raw = read_recbole(plain)
    assert raw.timestamps is None
    assert [[raw.item_tokens[i] for i in seq] for seq in raw.sequences] == [["c", "b", "c"], ["a"]]


def test_duplicate_lines_are_dropped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = inter(tmp_path / "d", [("u", "a", 1), ("u", "b", 2), ("u", "a", 1), ("u", "a", 3), ("u", "a", 1)])
    with caplog.at_level(logging.INFO, logger="lsc4rec.data.recbole"):
        raw = read_recbole(path)
    assert raw.num_interactions == 3  # a@1, b@2, a@3: a repeat at another time is a real interaction
    assert (
        "2 duplicate line(s) (same user, item and timestamp as an earlier line; first on line 4)"
        in caplog.text
    )
    assert "5 lines, 1 users, 2 items" in caplog.text


def test_blank_lines_crlf_and_a_byte_order_mark_are_not_content(tmp_path: Path) -> None:
    path = tmp_path / "x.inter"
    path.write_bytes(("\ufeff" + INTER_HEADER + "\r\n\r\nu\ta\t1\t1\r\n  \r\nu\tb\t1\t2\r\n").encode())
    raw = read_recbole(path)
    assert raw.sequences == [[1, 2]]


# --- the k-core filter -------------------------------------------------------------------------------------


def test_kcore_iterates_to_its_fixed_point(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # One pass (x, y out; then U3, U6 out) would keep U4 and U5; without U3 and U6, c and g fall below 2,
    # then U4 and U5 do: only U1 and U2 are left, after two rounds that removed something.
    pairs = ["U1 a", "U1 b", "U2 a", "U2 b", "U3 c", "U3 x", "U4 c", "U4 e", "U5 e", "U5 g", "U6 g", "U6 y"]
    rows = [(p.split()[0], p.split()[1], t) for t, p in enumerate(pairs)]
    with caplog.at_level(logging.INFO, logger="lsc4rec.data.recbole"):
        raw = read_recbole(inter(tmp_path / "k", rows), kcore=2)
    assert raw.user_tokens == {1: "U1", 2: "U2"}
    assert raw.item_tokens == {1: "a", 2: "b"}  # contiguous after the filter
    assert raw.sequences == [[1, 2], [1, 2]]
    assert (
        "data.kcore=2 kept 2 of 6 users and 2 items after 2 round(s) (8 interactions removed)" in caplog.text
    )
    assert read_recbole(inter(tmp_path / "k", rows), kcore=0).num_users == 6


def _naive_core(sequences: list[list[int]], k: int) -> set[int]:
    """Users of the k-core by repeated one-at-a-time removal (a different order than kcore_filter's)."""
    alive = set(range(len(sequences)))
    while True:
        counts = Counter(i for u in alive for i in sequences[u])
        items = {i for i, n in counts.items() if n >= k}
        weak = [u for u in sorted(alive) if sum(i in items for i in sequences[u]) < k]
        bad_items = [i for i, n in counts.items() if n < k]
        if not weak and not bad_items:
            return alive
        if weak:
            alive.discard(weak[0])
        else:
            sequences = [[i for i in seq if i != bad_items[0]] for seq in sequences]


@pytest.mark.parametrize("seed", range(5))
def test_kcore_result_holds_the_invariant_and_matches_another_peeling_order(seed: int) -> None:
    rng = random.Random(seed)
    sequences = [[rng.randrange(30) for _ in range(rng.randrange(1, 9))] for _ in range(60)]
    core = kcore_filter(sequences, 3, 3, "mem")
    kept = [[i for i in sequences[u] if i in core.items] for u in core.users]
    assert all(len(seq) >= 3 for seq in kept)
    assert all(n >= 3 for n in Counter(i for seq in kept for i in seq).values())
    assert set(core.users) == _naive_core(sequences, 3)


def test_kcore_applies_to_the_other_formats_too(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("1 5 6\n2 5 6\n3 7 5\n")
    raw = load_raw(path, kcore=2)
    assert raw.user_ids == [1, 2] and raw.sequences == [[5, 6], [5, 6]]
    with pytest.raises(ValueError, match=r"data\.kcore must be a whole number >= 0"):
        load_raw(path, kcore=-1)


def test_kcore_that_empties_the_data_names_the_filter(tmp_path: Path) -> None:
    rare = inter(tmp_path / "r", [("u", "a", 1), ("u", "b", 2), ("v", "c", 3)])
    expected = where(rare) + r" the k-core filter \(data\.kcore\) left nothing: the item filter .* in round 1"
    with pytest.raises(DataFormatError, match=expected):
        read_recbole(rare, kcore=2)
    short = inter(
        tmp_path / "s", [(u, i, t) for t, (u, i) in enumerate([("u", "a"), ("v", "a"), ("w", "a")])]
    )
    with pytest.raises(DataFormatError, match=r"the user filter \(at least 2 interactions per user\)"):
        read_recbole(short, kcore=2)


# --- item text ---------------------------------------------------------------------------------------------


def test_item_file_becomes_item_text_keyed_by_the_numbered_ids(tmp_path: Path) -> None:
    folder = tmp_path / "beauty"
    inter(folder, [("u", "B1", 1), ("u", "B2", 2), ("v", "B3", 3)], name="beauty")
    header = (
        "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tprice:float\tsales_rank:float"
    )
    atomic(
        folder,
        "beauty",
        header,
        [
            "B2\tRose   Face Cream\tAcme\tBeauty, Skin Care, Face\t12.5\t7",
            "B1\tLip Balm\t\t\t\t",
            "B9\tNot rated\tX\tY\t1\t1",
        ],
        suffix=".item",
    )
    raw = load_dataset("mine", folder)  # format auto: a folder holding X.inter
    assert raw.name == "mine" and raw.source == folder / "beauty.inter"
    b1, b2 = (next(k for k, v in raw.item_tokens.items() if v == t) for t in ("B1", "B2"))
    assert raw.item_text[b2].title == "Rose Face Cream"
    assert raw.item_text[b2].brand == "Acme"
    assert raw.item_text[b2].categories == ("Beauty", "Skin Care", "Face")
    assert raw.item_text[b2].price == 12.5
    assert raw.item_text[b2].render() == "Rose Face Cream | Acme | Beauty > Skin Care > Face"
    assert raw.item_text[b1].render() == "Lip Balm"
    assert len(raw.item_text) == 2  # B3 has no line, B9 no interaction
    split = leave_one_out(raw)
    assert split.report["items_with_text"] == 2


def test_movielens_style_item_columns_map_to_title_and_categories(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    inter(folder, [("1", "10", 1)], name="ml")
    header = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
    atomic(folder, "ml", header, ["10\tToy Story\t1995\tAnimation Children's Comedy"], suffix=".item")
    (text,) = read_recbole(folder / "ml.inter").item_text.values()
    assert (text.title, text.categories) == ("Toy Story", ("Animation", "Children's", "Comedy"))


# --- detection ---------------------------------------------------------------------------------------------


def test_auto_detection_and_folder_resolution(tmp_path: Path) -> None:
    path = inter(tmp_path / "shop", [("u", "a", 1)])
    assert detect_format(tmp_path / "shop") == "recbole"
    assert detect_format(path) == "recbole"
    assert load_raw(path).num_interactions == 1
    # A folder not named like its only .inter file still resolves to it.
    other = inter(tmp_path / "data", [("u", "a", 1)], name="events")
    assert resolve_inter_file(tmp_path / "data") == other
    inter(tmp_path / "data", [("u", "a", 1)], name="more")
    with pytest.raises(DataFormatError, match=where(tmp_path / "data") + r" several \.inter files"):
        resolve_inter_file(tmp_path / "data")


# --- errors ------------------------------------------------------------------------------------------------


def test_missing_paths_name_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match=re.escape(str(tmp_path / "gone.inter"))):
        load_raw(tmp_path / "gone.inter")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        DataFileNotFoundError, match=re.escape(str(empty / "empty.inter")) + ".*RecBole folder"
    ):
        load_raw(empty, format="recbole")
    with pytest.raises(DataFormatError, match=r"X\.inter \(RecBole\)"):
        load_raw(empty)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            "item_id:token\ttimestamp:float",
            r"the header has no user_id field \(header 'item_id:token\\ttimestamp",
        ),
        ("user_id:token\trating:float", r"the header has no item_id field \(header 'user_id:token\\trating"),
        ("user_id:token\titem_id:int", r"header field 'item_id:int': unknown type 'int' .*token, token_seq"),
        ("user_id\titem_id:token", r"header field 'user_id' has no ':type' suffix"),
        ("user_id:float\titem_id:token", r"header field 'user_id:float': user_id must be of type token"),
        (
            "user_id:token\titem_id:token\ttimestamp:token",
            r"header field 'timestamp:token': timestamp must be .*float",
        ),
        ("user_id:token\titem_id:token\titem_id:token", r"header field 'item_id' repeated"),
        ("user_id:token item_id:token timestamp:float", r"the header .* is not tab-separated"),
        ("196\t242\t3\t881250949", r"header field '196' has no ':type' suffix"),
    ],
)
def test_header_errors_name_the_file_and_the_header(tmp_path: Path, header: str, message: str) -> None:
    path = atomic(tmp_path, "bad", header, ["u\ta\t1"])
    with pytest.raises(DataFormatError, match=where(path, 1) + " " + message):
        read_recbole(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "u\ta\t5",
            r"expected 4 tab-separated fields \(user_id, item_id, rating, timestamp\), got 3: 'u\\ta\\t5'",
        ),
        ("u\ta\t5\tyesterday", r"timestamp 'yesterday' is not a number"),
        ("u\ta\tgreat\t1", r"rating 'great' is not a number"),
        ("u\ta\t5\tnan", r"timestamp 'nan' is not a finite number"),
        ("\ta\t5\t1", r"user_id is empty"),
        ("u\t \t5\t1", r"item_id is empty"),
    ],
)
def test_malformed_lines_name_file_line_and_value(tmp_path: Path, row: str, message: str) -> None:
    path = atomic(tmp_path, "bad", INTER_HEADER, ["u\tok\t5\t1", row])
    with pytest.raises(DataFormatError, match=where(path, 3) + " " + message):
        read_recbole(path)


def test_empty_files_and_item_file_errors(tmp_path: Path) -> None:
    empty = tmp_path / "e.inter"
    empty.write_text("\n\n")
    with pytest.raises(DataFormatError, match=where(empty) + " file is empty"):
        read_recbole(empty)
    header_only = atomic(tmp_path, "h", INTER_HEADER, [])
    with pytest.raises(DataFormatError, match=where(header_only) + " no interactions"):
        read_recbole(header_only)
    folder = tmp_path / "s"
    inter(folder, [("u", "a", 1)], name="s")
    item = atomic(folder, "s", "item_id:token\ttitle:token_seq", ["a\tOne", "a\tTwo"], suffix=".item")
    with pytest.raises(DataFormatError, match=where(item, 3) + r" item_id 'a' repeated \(first on line 2\)"):
        read_recbole(folder)
    atomic(folder, "s", "item_id:token\tprice:float", ["a\tcheap"], suffix=".item")
    with pytest.raises(DataFormatError, match=where(item, 2) + r" price 'cheap' is not a number"):
        read_recbole(folder)
    atomic(folder, "s", "title:token_seq", ["One"], suffix=".item")
    with pytest.raises(DataFormatError, match=where(item, 1) + r" the header has no item_id field"):
        read_recbole(folder)


# --- a real RecBole file (when one is available offline) ---------------------------------------------------


def _real_ml100k() -> Path | None:
    """RecBole's own ML-100K atomic files: ``$LSC4REC_RECBOLE_ML100K``, or the installed recbole package's
    dataset_example (never shipped here: GroupLens' terms forbid redistributing MovieLens)."""
    if os.environ.get("LSC4REC_RECBOLE_ML100K"):
        return Path(os.environ["LSC4REC_RECBOLE_ML100K"])
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    return folder if (folder / "ml-100k.inter").is_file() else None


REAL = _real_ml100k()


@pytest.mark.skipif(REAL is None, reason="no RecBole ml-100k atomic files (set LSC4REC_RECBOLE_ML100K)")
def test_real_recbole_ml100k() -> None:
    assert REAL is not None
    raw = load_dataset("ml-100k-recbole", REAL)
    assert (raw.num_users, len(raw.item_tokens), raw.num_interactions) == (943, 1682, 100_000)
    toy_story = next(k for k, v in raw.item_tokens.items() if v == "1")
    assert raw.item_text[toy_story].title == "Toy Story"
    assert raw.item_text[toy_story].categories == ("Animation", "Children's", "Comedy")
    assert all(a <= b for times in raw.timestamps or [] for a, b in itertools.pairwise(times))
    assert read_recbole(REAL, kcore=20).num_interactions < 100_000
    if SHARED_ML100K.is_dir():
        # The same ratings as GroupLens' u.data, read by the MovieLens reader: the same sequences per user.
        movielens = read_movielens(SHARED_ML100K)
        by_token = {
            int(raw.user_tokens[u]): [int(raw.item_tokens[i]) for i in seq]
            for u, seq in zip(raw.user_ids, raw.sequences, strict=True)
        }
        assert by_token == dict(zip(movielens.user_ids, movielens.sequences, strict=True))


def test_the_devices_and_the_server_read_the_same_kcore(tmp_path: Path) -> None:
    # data.kcore reaches every reader of a run: a node's shard holds the users and items the server numbered.
    from lsc4rec.client.shard import load_shard
    from lsc4rec.settings import federated_settings_from_overrides

    rows = [(f"u{u}", f"i{(u + k) % 9}", k) for u in range(30) for k in range(3 + u % 4)]
    rows += [("lonely", "rare-item", 1), ("lonely", "i1", 2), ("lonely", "i2", 3)]
    folder = inter(tmp_path / "data", rows)
    run = federated_settings_from_overrides([f"data.path={folder}", "data.name=toy", "data.kcore=4"])
    assert run.data.kcore == 4
    server = leave_one_out(load_dataset("toy", str(folder), run.data.format, kcore=run.data.kcore))
    shards = [load_shard("toy", str(folder), run.data.format, p, 2, kcore=run.data.kcore) for p in range(2)]
    assert sum(len(shard.users) for shard in shards) == len(server.train)
    assert all(shard.num_items == server.num_items for shard in shards)
    unfiltered = leave_one_out(load_dataset("toy", str(folder), run.data.format))
    assert len(server.train) < len(unfiltered.train)  # the filter removed someone
