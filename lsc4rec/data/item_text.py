"""Item text: titles, brands, categories, descriptions and prices of the catalogue's items.

A dataset ``X.txt`` may carry ``X_item_text.jsonl`` (or ``.jsonl.gz``) beside it, or any file passed as
``data.text_path``: one JSON object per line,
``{"item_id": 1, "title": "...", "brand": "...", "categories": ["...", ...], "description": "...",
"price": 12.5}``, any field but ``item_id`` may be null or absent; other keys (``asin``, ...) are ignored.
MovieLens titles and genres map onto the same structure (:func:`item_text_from_titles`).

Malformed lines raise :class:`DataFormatError` naming the file, line and field; items without text are
allowed (and counted by the dataset report); text for an item id the interactions never mention is an error.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from lsc4rec.data.errors import DataFileNotFoundError, DataFormatError, id_range_problem

__all__ = [
    "DEFAULT_TEXT_FIELDS",
    "TEXT_FIELDS",
    "ItemText",
    "check_text_items",
    "item_text_from_titles",
    "read_item_text",
    "text_file_beside",
]

#: The fields of a text record besides ``item_id``.
TEXT_FIELDS: tuple[str, ...] = ("title", "brand", "categories", "description", "price")

#: The fields an item's text is rendered from by default (``text.fields``).
DEFAULT_TEXT_FIELDS: tuple[str, ...] = ("title", "brand", "categories")


@dataclass(frozen=True)
class ItemText:
    """What the catalogue says about one item; every field may be missing."""

    title: str | None = None
    brand: str | None = None
    categories: tuple[str, ...] = ()
    description: str | None = None
    price: float | None = None

    @property
    def is_empty(self) -> bool:
        """True when no field holds anything to read."""
        return not (self.title or self.brand or self.categories or self.description) and self.price is None

    def render(self, fields: Sequence[str] = DEFAULT_TEXT_FIELDS) -> str:
        """The item as one line of text, ``title | brand | cat > cat``: the input of a text encoder.

        Missing fields are left out; an item with none of ``fields`` renders as ``""``.
        """
        parts: list[str] = []
        for name in fields:
            if name not in TEXT_FIELDS:
                raise ValueError(f"unknown item text field {name!r}; fields: {', '.join(TEXT_FIELDS)}")
            value = getattr(self, name)
            if name == "categories":
                value = " > ".join(value) if value else None
            elif name == "price" and value is not None:
                value = f"price {value:g}"
            if value:
                parts.append(str(value))
        return " | ".join(parts)


def _optional_text(record: Mapping, name: str, path: Path, lineno: int) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataFormatError(path, f"field {name!r}: expected a string or null, got {value!r}", lineno)
    value = " ".join(value.split())
    return value or None


def _categories(record: Mapping, path: Path, lineno: int) -> tuple[str, ...]:
    value = record.get("categories")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise DataFormatError(
            path, f"field 'categories': expected a list of strings or null, got {value!r}", lineno
        )
    return tuple(c.strip() for c in value if c.strip())


def _price(record: Mapping, path: Path, lineno: int) -> float | None:
    value = record.get("price")
    if value is None:
        return None
    # bool is an int subclass, but true/false is never a price.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise DataFormatError(path, f"field 'price': expected a number >= 0 or null, got {value!r}", lineno)
    return float(value)


def _item_id(record: Mapping, path: Path, lineno: int) -> int:
    if "item_id" not in record:
        raise DataFormatError(path, "field 'item_id' is missing", lineno)
    value = record["item_id"]
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and value.strip().isascii():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataFormatError(path, f"field 'item_id': expected an integer, got {value!r}", lineno)
    problem = id_range_problem(value, "item_id")
    if problem:
        raise DataFormatError(path, f"field 'item_id': {problem}", lineno)
    return value


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open("r", encoding="utf-8-sig")


def read_item_text(path: str | PathLike[str]) -> dict[int, ItemText]:
    """Read a JSON-lines item text file (plain or ``.gz``) into ``{raw item id: ItemText}``.

    Blank lines are skipped; a byte-order mark is accepted. Invalid JSON, a non-object line, a missing or
    non-integer ``item_id``, a repeated item id or a field of the wrong type raise DataFormatError naming the
    file, line and field.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataFileNotFoundError(p, "an item text file with one JSON object per line")
    texts: dict[int, ItemText] = {}
    first_line: dict[int, int] = {}
    try:
        with _open_text(p) as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataFormatError(
                        p, f"invalid JSON: {error.msg} (column {error.colno})", lineno
                    ) from None
                if not isinstance(record, dict):
                    raise DataFormatError(p, f"expected a JSON object, got {type(record).__name__}", lineno)
                item = _item_id(record, p, lineno)
                if item in first_line:
                    raise DataFormatError(
                        p, f"item_id {item} repeated (first on line {first_line[item]})", lineno
                    )
                first_line[item] = lineno
                texts[item] = ItemText(
                    title=_optional_text(record, "title", p, lineno),
                    brand=_optional_text(record, "brand", p, lineno),
                    categories=_categories(record, p, lineno),
                    description=_optional_text(record, "description", p, lineno),
                    price=_price(record, p, lineno),
                )
    except UnicodeDecodeError as error:
        raise DataFormatError(p, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except (OSError, EOFError) as error:
        if isinstance(error, DataFileNotFoundError):
            raise
        raise DataFormatError(p, f"cannot read the file ({error})") from None
    if not texts:
        raise DataFormatError(p, "file is empty (expected one JSON object per line)")
    return texts


def check_text_items(
    texts: Mapping[int, ItemText], known_items: Iterable[int], path: str | PathLike[str]
) -> None:
    """Raise DataFormatError when ``texts`` holds an item id the interaction data never mentions."""
    known = set(known_items)
    unknown = sorted(item for item in texts if item not in known)
    if unknown:
        raise DataFormatError(
            path,
            f"text for {len(unknown)} item id(s) that no interaction mentions (e.g. {unknown[:5]}); "
            "item text must describe the dataset's items",
        )


def item_text_from_titles(
    titles: Mapping[int, str], genres: Mapping[int, Sequence[str]] | None = None
) -> dict[int, ItemText]:
    """MovieLens-style side information (title, genres) as item text (genres become categories)."""
    genres = genres or {}
    items = set(titles) | set(genres)
    return {
        item: ItemText(
            title=" ".join(titles.get(item, "").split()) or None,
            categories=tuple(genres.get(item, ())),
        )
        for item in sorted(items)
    }


def text_file_beside(data_file: Path) -> Path | None:
    """``X_item_text.jsonl`` (or ``.jsonl.gz``) beside the sequence file ``X.txt``, if one exists."""
    for suffix in (".jsonl", ".jsonl.gz"):
        candidate = data_file.with_name(f"{data_file.stem}_item_text{suffix}")
        if candidate.is_file():
            return candidate
    return None
