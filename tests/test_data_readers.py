"""Readers, format detection, the dataset registry and the embedded Beauty copy."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ML100K_RATINGS, SHARED_ML100K

from lsc4rec.data import (
    EMBEDDED_DATASETS,
    ML100K_GENRES,
    DataFileNotFoundError,
    DataFormatError,
    detect_format,
    embedded_attributes_path,
    embedded_path,
    leave_one_out,
    load_dataset,
    load_raw,
    read_item_attributes,
    read_movielens,
    read_pair_file,
    read_sequence_file,
)

Writer = Callable[..., Path]


def where(path: Path, line: int | None = None) -> str:
    """Regex for the 'file line N:' prefix of a DataFormatError message."""
    return re.escape(f"{path} line {line}:" if line is not None else f"{path}:")


# --- sequence files ----------------------------------------------------------------------------------------


def test_sequence_file_parses_users_and_items_in_order(write_text: Writer) -> None:
    path = write_text("seq.txt", "1 5 6 7\n\n3 7 5\n2 9 9 8\n")
    raw = read_sequence_file(path)
    assert raw.name == "seq"
    assert raw.source == path
    assert raw.user_ids == [1, 3, 2]
    assert raw.sequences == [[5, 6, 7], [7, 5], [9, 9, 8]]
    assert raw.num_interactions == 8
    assert raw.num_users == 3
    assert raw.item_titles == {} and raw.item_genres == {} and raw.item_attributes == {}


def test_sequence_file_accepts_tabs_and_crlf(write_text: Writer) -> None:
    raw = read_sequence_file(write_text("seq.txt", "1\t5 6\r\n2 7\r\n"))
    assert raw.sequences == [[5, 6], [7]]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("1 2 3\n2 4 abc 5\n", 2, "item id 'abc' is not an integer"),
        ("1 2 3\n\nx7 4 5\n", 3, "user id 'x7' is not an integer"),
        ("1 2 3\n2 4 1.5\n", 2, "item id '1.5' is not an integer"),
        ("1 2 3\n2 4 1_000\n", 2, "item id '1_000' is not an integer"),
        ("1 2 3\n2\n", 2, "user 2 has no items"),
        ("1 2 3\n2 4\n1 5 6\n", 3, "user id 1 repeated (first on line 1)"),
    ],
)
def test_sequence_file_errors_name_file_line_and_value(
    write_text: Writer, text: str, line: int, message: str
) -> None:
    path = write_text("Beauty.txt", text)
    with pytest.raises(DataFormatError, match=where(path, line) + " " + re.escape(message)):
        read_sequence_file(path)


@pytest.mark.parametrize("suffix", ["seq.txt", "pairs.txt", "ml/u.data"])
def test_a_byte_order_mark_is_not_content(tmp_path: Path, suffix: str) -> None:
    # Spreadsheet exports start with a UTF-8 BOM: the file reads exactly as without it.
    text = {
        "seq.txt": "1 5 6 7\n2 6 5 6\n3 5 7 6\n",
        "pairs.txt": "1 5\n1 6\n2 6\n2 5\n3 5\n3 7\n",
        "ml/u.data": "1\t5\t4\t100\n1\t6\t3\t101\n2\t6\t5\t102\n2\t5\t5\t103\n",
    }[suffix]
    plain, marked = tmp_path / "plain" / suffix, tmp_path / "marked" / suffix
    for path, data in ((plain, text.encode()), (marked, b"\xef\xbb\xbf" + text.encode())):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    source = (lambda p: p.parent) if suffix.startswith("ml/") else (lambda p: p)
    with_bom, without = load_raw(source(marked)), load_raw(source(plain))
    assert with_bom.user_ids == without.user_ids and with_bom.sequences == without.sequences


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "seq.txt",
            "1 5 6\n2 12345678901234567890 5\n",
            "item id 12345678901234567890 does not fit in 64 bits",
        ),
        (
            "seq.txt",
            "1 5 6\n-99999999999999999999 5 6\n",
            "user id -99999999999999999999 does not fit in 64 bits",
        ),
        (
            "pairs.txt",
            "1 5\n2 18446744073709551616\n",
            "item id 18446744073709551616 does not fit in 64 bits",
        ),
        ("ml/u.data", "1\t5\t4\t100\n99999999999999999999\t6\t3\t101\n", "user id 99999999999999999999"),
    ],
)
def test_ids_beyond_64_bits_are_refused_at_their_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(DataFormatError, match=where(path, 2) + " " + re.escape(message)):
        load_raw(path.parent if name.startswith("ml/") else path)
    # The largest 64-bit id is an id like any other, through the split.
    fine = tmp_path / "fine.txt"
    fine.write_text(f"1 5 {2**63 - 1} 6\n2 6 5 {2**63 - 1}\n")
    assert leave_one_out(load_dataset("fine", str(fine))).num_items == 3


def test_sequence_file_empty_is_an_error(write_text: Writer) -> None:
    path = write_text("empty.txt", "\n  \n")
    with pytest.raises(DataFormatError, match=where(path) + " file is empty"):
        read_sequence_file(path)


def test_missing_file_names_the_path_and_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    expected = re.escape(f"{path}: not found (expected a sequence file")
    with pytest.raises(DataFileNotFoundError, match=expected) as e:
        read_sequence_file(path)
    assert isinstance(e.value, FileNotFoundError)
    assert e.value.filename == str(path)


def test_folder_instead_of_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="but this is a folder"):
        read_pair_file(tmp_path)


# --- pair files --------------------------------------------------------------------------------------------


def test_pair_file_groups_by_user_in_file_order(write_text: Writer) -> None:
    path = write_text("pairs.txt", "2 10\n1 11\n2 12\n\n1 10\n2 10\n")
    raw = read_pair_file(path)
    assert raw.user_ids == [2, 1]
    assert raw.sequences == [[10, 12, 10], [11, 10]]
    assert raw.num_interactions == 5


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("1 2\n1 2 3\n", 2, "expected 2 fields 'user item', got 3: '1 2 3'"),
        ("1 2\n7\n", 2, "expected 2 fields 'user item', got 1: '7'"),
        ("1 2\n1 b\n", 2, "item id 'b' is not an integer"),
        ("1 2\n\nu 3\n", 3, "user id 'u' is not an integer"),
    ],
)
def test_pair_file_errors(write_text: Writer, text: str, line: int, message: str) -> None:
    path = write_text("pairs.txt", text)
    with pytest.raises(DataFormatError, match=where(path, line) + " " + re.escape(message)):
        read_pair_file(path)


def test_pair_file_empty_is_an_error(write_text: Writer) -> None:
    path = write_text("pairs.txt", "")
    with pytest.raises(DataFormatError, match=where(path) + " file is empty"):
        read_pair_file(path)


# --- MovieLens ---------------------------------------------------------------------------------------------


def test_movielens_100k_sorts_by_time_with_stable_ties(movielens_100k_dir: Path) -> None:
    raw = read_movielens(movielens_100k_dir)
    assert raw.name == "ml-100k"
    assert raw.source == movielens_100k_dir / "u.data"
    assert raw.user_ids == [1, 2, 3]
    # User 1: 10@100, 40@150, then the tie 20@200 / 30@200 in file order.
    assert raw.sequences == [[10, 40, 20, 30], [30, 10], [20]]
    assert raw.num_interactions == 7


def test_movielens_100k_titles_and_genres(movielens_100k_dir: Path) -> None:
    raw = read_movielens(movielens_100k_dir)
    assert raw.item_titles == {
        10: "Alpha (1990)",
        20: "Beta|Gamma (1995)",
        30: "Épée (1996)",
        40: "Delta (1997)",
    }
    assert raw.item_genres == {10: ["Action", "Comedy"], 20: [], 30: ["unknown"], 40: ["Drama", "Western"]}
    assert ML100K_GENRES[8] == "Drama" and len(ML100K_GENRES) == 19


def test_movielens_100k_uses_u_genre_when_present(movielens_100k_dir: Path) -> None:
    names = [f"G{i}" for i in range(19)]
    # Written out of index order on purpose: names are placed by their index field.
    lines = [f"{name}|{i}" for i, name in enumerate(names)][::-1]
    (movielens_100k_dir / "u.genre").write_text("\n".join(lines) + "\n\n")
    raw = read_movielens(movielens_100k_dir)
    assert raw.item_genres[10] == ["G1", "G5"]


def test_movielens_ratings_file_path_and_ml1m_layout(movielens_1m_dir: Path) -> None:
    for path in (movielens_1m_dir, movielens_1m_dir / "ratings.dat"):
        raw = read_movielens(path)
        assert raw.user_ids == [5, 7]
        # User 7: 2@5, then the tie 3@10 / 1@10 in file order.
        assert raw.sequences == [[1, 2], [2, 3, 1]]
        assert raw.item_titles == {1: "Toy Story (1995)", 2: "Café (2000)", 3: "Nothing (2001)"}
        assert raw.item_genres == {1: ["Animation", "Children's", "Comedy"], 2: ["Drama"], 3: []}


def test_movielens_renamed_ratings_file_is_sniffed(movielens_1m_dir: Path) -> None:
    renamed = movielens_1m_dir / "my_ratings.txt"
    renamed.write_text((movielens_1m_dir / "ratings.dat").read_text())
    assert detect_format(renamed) == "movielens"
    assert load_raw(renamed).sequences == [[1, 2], [2, 3, 1]]


def test_movielens_min_rating_filters_and_logs(
    movielens_100k_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="lsc4rec.data.readers"):
        raw = read_movielens(movielens_100k_dir, min_rating=3)
    assert raw.user_ids == [1, 2]
    assert raw.sequences == [[10, 40, 20, 30], [10]]
    assert "min_rating=3 removed 2 of 7 ratings (5 kept, 2 users left)" in caplog.text


def test_movielens_missing_item_file_warns(
    movielens_100k_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (movielens_100k_dir / "u.item").unlink()
    with caplog.at_level(logging.WARNING, logger="lsc4rec.data.readers"):
        raw = read_movielens(movielens_100k_dir)
    assert raw.item_titles == {} and raw.item_genres == {}
    assert raw.sequences[0] == [10, 40, 20, 30]
    assert any(r.levelno == logging.WARNING and "u.item not found" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1\t2\t3\n", "expected 4 fields 'user<TAB>item<TAB>rating<TAB>timestamp', got 3"),
        ("1\tx\t3\t4\n", "item id 'x' is not an integer"),
        ("1\t2\tgood\t4\n", "rating 'good' is not a number"),
        ("1\t2\t3\tyesterday\n", "timestamp 'yesterday' is not a number"),
    ],
)
def test_movielens_malformed_line(movielens_100k_dir: Path, line: str, message: str) -> None:
    ratings = movielens_100k_dir / "u.data"
    ratings.write_text(ratings.read_text() + line)
    line_number = len(ML100K_RATINGS) + 1
    with pytest.raises(DataFormatError, match=where(ratings, line_number) + " " + re.escape(message)):
        read_movielens(movielens_100k_dir)


def test_movielens_bad_item_file_line(movielens_100k_dir: Path) -> None:
    items = movielens_100k_dir / "u.item"
    items.write_text(items.read_text(encoding="latin-1") + "50|Short|line\n", encoding="latin-1")
    with pytest.raises(DataFormatError, match=where(items, 5) + " expected 24 '\\|'-separated fields"):
        read_movielens(movielens_100k_dir)


def test_movielens_empty_and_missing(tmp_path: Path, write_text: Writer) -> None:
    empty = write_text("ml/u.data", "")
    with pytest.raises(DataFormatError, match=where(empty) + " file is empty"):
        read_movielens(empty.parent)
    with pytest.raises(DataFileNotFoundError, match=r"nothing-here: not found .*MovieLens folder or ratings"):
        read_movielens(tmp_path / "nothing-here")
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(DataFileNotFoundError, match=re.escape("u.data (ML-100K) or ratings.dat")):
        read_movielens(tmp_path / "nothing-here")


@pytest.mark.skipif(not SHARED_ML100K.is_dir(), reason=f"no shared MovieLens 100K copy at {SHARED_ML100K}")
def test_real_movielens_100k_counts() -> None:
    raw = load_raw(SHARED_ML100K)
    assert raw.num_users == 943
    assert len({item for seq in raw.sequences for item in seq}) == 1682
    assert raw.num_interactions == 100_000
    assert len(raw.item_titles) == 1682
    assert raw.item_titles[1] == "Toy Story (1995)"
    assert raw.item_genres[1] == ["Animation", "Children's", "Comedy"]
    assert min(len(seq) for seq in raw.sequences) >= 20


# --- item attributes ---------------------------------------------------------------------------------------


def test_item_attributes_parse(write_text: Writer) -> None:
    path = write_text("attrs.json", '{"4": [1, 2, 3], "83": [], "7": [2]}')
    assert read_item_attributes(path) == {4: [1, 2, 3], 83: [], 7: [2]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"4": [1], "abc": [2]}', "item key 'abc' is not an integer"),
        ('{"4": 3}', "item '4': expected a list of attribute ids, got 3"),
        ('{"5": [1, "x"]}', "item '5': attribute 'x' is not an integer"),
        ('{"6": [true]}', "item '6': attribute True is not an integer"),
        ('{"7": [1.5]}', "item '7': attribute 1.5 is not an integer"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_item_attributes_errors(write_text: Writer, text: str, message: str) -> None:
    path = write_text("attrs.json", text)
    with pytest.raises(DataFormatError, match=where(path) + " " + re.escape(message)):
        read_item_attributes(path)


def test_item_attributes_invalid_json_names_the_line(write_text: Writer) -> None:
    path = write_text("attrs.json", '{\n"4": [1],\n"5": [2,,]\n}')
    with pytest.raises(DataFormatError, match=where(path, 3) + " invalid JSON"):
        read_item_attributes(path)


# --- format detection and load_raw -------------------------------------------------------------------------


def test_detect_format(write_text: Writer, movielens_100k_dir: Path, movielens_1m_dir: Path) -> None:
    assert detect_format(write_text("s.txt", "1 2 3\n2 4\n")) == "sequence"
    assert detect_format(write_text("p.txt", "1 2\n1 3\n2 4\n")) == "pairs"
    assert detect_format(movielens_100k_dir) == "movielens"
    assert detect_format(movielens_100k_dir / "u.data") == "movielens"
    assert detect_format(movielens_1m_dir) == "movielens"
    # A one-field line among sequence lines is left for the sequence reader to report precisely.
    assert detect_format(write_text("s2.txt", "1 2 3\n5\n")) == "sequence"


@pytest.mark.parametrize(
    ("text", "line", "seen"),
    [
        ("user,item\n1,2\n", 1, "'user,item'"),
        ("1 2 3\nA1B2 B00X\n", 2, "'A1B2 B00X'"),
        ("1\n2\n", 1, "every line holds a single id (saw '1')"),
    ],
)
def test_detect_format_unknown(write_text: Writer, text: str, line: int, seen: str) -> None:
    path = write_text("data.csv", text)
    with pytest.raises(DataFormatError, match=where(path, line) + " unknown format.*" + re.escape(seen)):
        detect_format(path)


def test_detect_format_empty_folder_and_missing(tmp_path: Path, write_text: Writer) -> None:
    empty = write_text("empty.txt", "")
    with pytest.raises(DataFormatError, match=where(empty) + " unknown format: the file is empty"):
        detect_format(empty)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "readme.md").write_text("hi")
    expected = where(folder) + r" unknown format: a folder without u\.data.*readme"
    with pytest.raises(DataFormatError, match=expected):
        detect_format(folder)
    with pytest.raises(DataFileNotFoundError, match=re.escape(str(tmp_path / "gone.txt"))):
        detect_format(tmp_path / "gone.txt")


def test_load_raw_formats_names_and_attributes(write_text: Writer, movielens_100k_dir: Path) -> None:
    seq = write_text("shop.txt", "1 2 3\n2 3 4\n")
    attrs = write_text("attrs.json", '{"2": [9]}')
    raw = load_raw(seq, attributes_path=attrs)
    assert (raw.name, raw.user_ids, raw.sequences) == ("shop", [1, 2], [[2, 3], [3, 4]])
    assert raw.item_attributes == {2: [9]}
    # Forcing "pairs" on the same file fails loudly instead of guessing.
    with pytest.raises(DataFormatError, match=where(seq, 1) + " expected 2 fields"):
        load_raw(seq, format="pairs")
    pairs = load_raw(write_text("p.txt", "1 2\n1 3\n"), name="mine")
    assert (pairs.name, pairs.sequences) == ("mine", [[2, 3]])
    assert load_raw(movielens_100k_dir, format="movielens").num_interactions == 7


def test_load_raw_rejects_unknown_format_and_missing_path(tmp_path: Path, write_text: Writer) -> None:
    path = write_text("s.txt", "1 2 3\n")
    expected = "unknown data format 'csv'; valid formats: auto, sequence, pairs, movielens"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_raw(path, format="csv")
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        load_raw(tmp_path / "nope.txt")


# --- registry and the embedded Beauty dataset --------------------------------------------------------------

BEAUTY_MD5 = {
    "Beauty.txt": "cb03635343187f36526ed4ba48102b53",
    "Beauty_item2attributes.json": "d4955784543b9e8e68385db31cb30144",
}


def test_embedded_beauty_files_match_their_checksums() -> None:
    folder = embedded_path("beauty").parent
    for name, md5 in BEAUTY_MD5.items():
        assert hashlib.md5((folder / name).read_bytes()).hexdigest() == md5, name
    attribution = (folder / "ATTRIBUTION.md").read_text()
    assert all(md5 in attribution for md5 in BEAUTY_MD5.values())
    assert embedded_attributes_path("beauty") == folder / "Beauty_item2attributes.json"


def test_embedded_beauty_loads_with_expected_statistics() -> None:
    raw = load_dataset("beauty")
    assert raw.name == "beauty"
    assert raw.num_users == 22_363
    assert raw.num_interactions == 198_502
    assert len({item for seq in raw.sequences for item in seq}) == 12_101
    lengths = [len(seq) for seq in raw.sequences]
    assert (min(lengths), max(lengths)) == (5, 204)
    assert len({a for attrs in raw.item_attributes.values() for a in attrs}) == 637
    assert raw.item_attributes[4] == [1, 2, 3]


def test_load_dataset_paths_and_errors(write_text: Writer, movielens_100k_dir: Path) -> None:
    assert set(EMBEDDED_DATASETS) == {"beauty"}
    for name in ("ml-100k", "ml100k", "ml-1m"):
        with pytest.raises(ValueError, match=r"MovieLens cannot be shipped.*GroupLens.*data\.path="):
            load_dataset(name)
    with pytest.raises(ValueError, match=r"unknown dataset 'mystery'.*embedded datasets: beauty"):
        load_dataset("mystery", None)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mystery", "")
    assert load_dataset("ml-100k", str(movielens_100k_dir), "movielens").num_interactions == 7
    seq = write_text("Shop.txt", "1 2 3\n")
    write_text("Shop_item2attributes.json", '{"2": [5]}')
    raw = load_dataset("shop", str(seq))
    assert (raw.name, raw.sequences, raw.item_attributes) == ("shop", [[2, 3]], {2: [5]})
    # "beauty" with a path means the user's own copy, not the embedded one.
    assert load_dataset("beauty", seq).num_users == 1
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        load_dataset("anything", str(seq.parent / "nope.txt"))
