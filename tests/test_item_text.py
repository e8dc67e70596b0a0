"""Item text as data: the JSON-lines reader, its errors, discovery beside a data file, MovieLens titles."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lsc4rec.data import DataFormatError, ItemText, leave_one_out, load_dataset, read_item_text
from lsc4rec.data.item_text import item_text_from_titles


def write_lines(path: Path, records: list, encoding: str = "utf-8") -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding=encoding
    )
    return path


def test_reader_parses_every_field_and_tolerates_nulls_extras_and_a_bom(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "t.jsonl",
        [
            {
                "item_id": 1,
                "asin": "B0",
                "title": "  Red   Nail Polish ",
                "brand": "OPI",
                "categories": ["Beauty", "Nails"],
                "description": "Glossy.",
                "price": 7.5,
            },
            {
                "item_id": 2,
                "title": None,
                "brand": None,
                "categories": [],
                "description": None,
                "price": None,
            },
            {"item_id": "3", "title": "Only a title"},
            "",
        ],
        encoding="utf-8-sig",
    )
    texts = read_item_text(path)
    assert texts[1] == ItemText("Red Nail Polish", "OPI", ("Beauty", "Nails"), "Glossy.", 7.5)
    assert texts[2].is_empty and not texts[3].is_empty
    assert texts[1].render() == "Red Nail Polish | OPI | Beauty > Nails"
    assert texts[1].render(("title", "price")) == "Red Nail Polish | price 7.5"
    assert texts[2].render() == ""
    with pytest.raises(ValueError, match="unknown item text field 'colour'"):
        texts[1].render(("colour",))


def test_reader_reads_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"item_id": 5, "title": "Lip balm"}) + "\n")
    assert read_item_text(path)[5].title == "Lip balm"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"item_id": 1, "title": "a"', r"t.jsonl line 2: invalid JSON"),
        ("[1, 2]", r"line 2: expected a JSON object, got list"),
        ('{"title": "a"}', r"line 2: field 'item_id' is missing"),
        ('{"item_id": 1.5}', r"line 2: field 'item_id': expected an integer, got 1.5"),
        ('{"item_id": true}', r"line 2: field 'item_id': expected an integer, got True"),
        ('{"item_id": 1}', r"line 2: item_id 1 repeated \(first on line 1\)"),
        ('{"item_id": 2, "title": 7}', r"line 2: field 'title': expected a string or null, got 7"),
        ('{"item_id": 2, "categories": "Nails"}', r"line 2: field 'categories': expected a list of strings"),
        ('{"item_id": 2, "price": "cheap"}', r"line 2: field 'price': expected a number >= 0 or null"),
        ('{"item_id": 2, "price": -1}', r"line 2: field 'price'"),
    ],
)
def test_reader_names_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "t.jsonl", ['{"item_id": 1, "title": "ok"}', line])
    with pytest.raises(DataFormatError, match=message):
        read_item_text(path)


def test_reader_rejects_empty_and_binary_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataFormatError, match=r"empty\.jsonl: file is empty"):
        read_item_text(empty)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"item_id": 1, "title": "\xff\xfe"}\n')
    with pytest.raises(DataFormatError, match=r"bin\.jsonl: not UTF-8"):
        read_item_text(binary)


def sequence_file(tmp_path: Path) -> Path:
    path = tmp_path / "shop.txt"
    path.write_text("1 10 20 30\n2 20 30 40 10\n")
    return path


def test_text_beside_the_data_file_is_loaded_and_counted(tmp_path: Path) -> None:
    data = sequence_file(tmp_path)
    write_lines(
        tmp_path / "shop_item_text.jsonl",
        [{"item_id": 10, "title": "Mascara"}, {"item_id": 30, "brand": "Acme"}, {"item_id": 40}],
    )
    raw = load_dataset("shop", data)
    assert set(raw.item_text) == {10, 30, 40}
    split = leave_one_out(raw)
    # Internal ids follow first appearance: 10 -> 1, 20 -> 2, 30 -> 3, 40 -> 4; item 40's record is empty.
    assert split.item_text == {1: ItemText(title="Mascara"), 3: ItemText(brand="Acme")}
    assert split.report["items_with_text"] == 2 and split.report["items_with_title"] == 1
    assert split.subset([1]).item_text == split.item_text


def test_explicit_text_path_wins_and_unknown_items_are_an_error(tmp_path: Path) -> None:
    data = sequence_file(tmp_path)
    write_lines(tmp_path / "shop_item_text.jsonl", [{"item_id": 10, "title": "beside"}])
    other = write_lines(tmp_path / "other.jsonl", [{"item_id": 20, "title": "explicit"}])
    assert load_dataset("shop", data, text_path=other).item_text[20].title == "explicit"
    unknown = write_lines(tmp_path / "unknown.jsonl", [{"item_id": 10}, {"item_id": 99}, {"item_id": 77}])
    with pytest.raises(DataFormatError, match=r"unknown.jsonl: text for 2 item id\(s\) .*\[77, 99\]"):
        load_dataset("shop", data, text_path=unknown)


def test_no_text_is_fine(tmp_path: Path) -> None:
    split = leave_one_out(load_dataset("shop", sequence_file(tmp_path)))
    assert split.item_text == {} and split.report["items_with_text"] == 0


def test_movielens_titles_and_genres_become_item_text(movielens_100k_dir: Path) -> None:
    raw = load_dataset("ml-100k", movielens_100k_dir)
    rated = {item for seq in raw.sequences for item in seq}
    assert set(raw.item_text) == rated
    for item in rated:
        assert raw.item_text[item].title == raw.item_titles[item]
        assert raw.item_text[item].categories == tuple(raw.item_genres[item])
    assert item_text_from_titles({1: "Heat (1995)"}, {1: ["Action", "Crime"]})[1].render() == (
        "Heat (1995) | Action > Crime"
    )


def test_embedded_beauty_ships_its_text() -> None:
    split = leave_one_out(load_dataset("beauty"))
    assert split.report["items_with_text"] == 12_101
    assert split.report["items_with_title"] == 12_094
    brands = sum(1 for text in split.item_text.values() if text.brand)
    assert brands == 9_959
    # Item 1 of the file, through the id map.
    first = split.item_text[split.item_map.to_internal(1)]
    assert first.title == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce" and first.brand == "OPI"
