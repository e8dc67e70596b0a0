"""RecBole atomic files: ``X.inter`` (interactions) and, when present, ``X.item`` (item text).

An atomic file is tab-separated text whose first line is a typed header, one ``name:type`` per column, the
type one of :data:`RECBOLE_TYPES`::

    user_id:token	item_id:token	rating:float	timestamp:float
    196	242	3	881250949

``X.inter`` needs ``user_id`` and ``item_id`` columns (tokens: any text, e.g. Amazon ASINs); ``timestamp`` is
optional (without it each user's lines keep file order). Each user's interactions are sorted by time (a
stable sort: ties keep file order); with a timestamp, a line repeating an earlier line's user, item and time
is dropped and counted. An optional k-core filter (:func:`kcore_filter`) then runs to its fixed point, and
the tokens are numbered 1..N: users in order of first appearance in the file, items in order of first
appearance in the time-sorted sequences, user by user. ``X.item`` beside it gives item text
(:class:`ItemText`): ``title`` (also ``movie_title``, ``name``), ``brand``, ``categories`` (also
``category``, ``genre``, ``class``), ``description`` and ``price``; other columns are ignored.

This module reads the files only; :func:`lsc4rec.data.readers.read_recbole` turns the result into a
:class:`~lsc4rec.data.readers.RawDataset`. Malformed content raises :class:`DataFormatError` naming the file,
the 1-based line and the value; a missing file raises :class:`DataFileNotFoundError`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import NoReturn, TypeVar

from lsc4rec.data.errors import DataFileNotFoundError, DataFormatError
from lsc4rec.data.item_text import ItemText

__all__ = [
    "RECBOLE_TYPES",
    "AtomicField",
    "KCoreResult",
    "RecBoleData",
    "is_recbole_folder",
    "kcore_filter",
    "parse_header",
    "read_recbole_files",
    "resolve_inter_file",
]

logger = logging.getLogger(__name__)

#: The column types of RecBole's atomic files.
RECBOLE_TYPES: tuple[str, ...] = ("token", "token_seq", "float", "float_seq")

USER_FIELD, ITEM_FIELD, TIME_FIELD = "user_id", "item_id", "timestamp"

#: ``.item`` column names (lower case) that become each field of :class:`ItemText`.
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "title": ("title", "movie_title", "name", "item_name"),
    "brand": ("brand",),
    "categories": ("categories", "category", "genre", "genres", "class"),
    "description": ("description",),
    "price": ("price",),
}

_BOMS = ("\ufeff", "\xef\xbb\xbf")

H = TypeVar("H", bound=Hashable)


@dataclass(frozen=True)
class AtomicField:
    """One column of an atomic file's header: ``name:type``."""

    name: str
    type: str


@dataclass
class RecBoleData:
    """What :func:`read_recbole_files` read: sequences in numbered ids, the tokens they stand for, item text.

    ``user_tokens[k]`` is the file's token of user ``k + 1`` (``sequences[k]``); ``item_tokens[i]`` that of
    item ``i + 1``. ``timestamps`` is parallel to ``sequences``, or None when ``X.inter`` has no timestamp.
    """

    inter_file: Path
    user_tokens: list[str]
    item_tokens: list[str]
    sequences: list[list[int]]
    timestamps: list[list[float]] | None
    item_text: dict[int, ItemText] = field(default_factory=dict)


@dataclass(frozen=True)
class KCoreResult:
    """The part of a dataset a k-core filter keeps: row indices of the users, the set of items, and how many
    filtering rounds removed something."""

    users: list[int]
    items: frozenset
    rounds: int


def _quoted(token: str, limit: int = 40) -> str:
    """``token`` quoted for a message, cut to ``limit`` characters."""
    if len(token) <= limit:
        return repr(token)
    return f"{token[:limit]!r}... ({len(token)} characters)"


# ------------------------------------------------------------------------------------------ files and header
def is_recbole_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a RecBole interaction file (``*.inter``)."""
    return any(child.suffix == ".inter" and child.is_file() for child in folder.iterdir())


def resolve_inter_file(path: str | PathLike[str]) -> Path:
    """The ``.inter`` file ``path`` names: the file itself, or in a folder ``X/X.inter`` or its only
    ``*.inter``.

    A missing path or a folder without ``.inter`` raises DataFileNotFoundError; a folder with several
    ``.inter`` files and none named after the folder raises DataFormatError listing them.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise DataFileNotFoundError(p, "a RecBole .inter file or a folder holding X.inter")
    named = p / f"{p.name}.inter"
    if named.is_file():
        return named
    found = sorted(child for child in p.iterdir() if child.suffix == ".inter" and child.is_file())
    if not found:
        raise DataFileNotFoundError(named, "a RecBole folder holding X.inter (tab-separated, typed header)")
    if len(found) > 1:
        names = ", ".join(child.name for child in found[:6])
        raise DataFormatError(
            p, f"several .inter files ({names}) and none named {named.name}: pass the one to read as the path"
        )
    return found[0]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(1-based line number, line without its line ending)`` for every line of ``path``; a byte-order mark
    is dropped, an undecodable byte becomes U+FFFD (reported as a bad value, never a UnicodeError)."""
    with path.open("r", encoding="utf-8", errors="replace", newline="") as handle:
        for lineno, line in enumerate(handle, start=1):
            if lineno == 1:
                for bom in _BOMS:
                    line = line.removeprefix(bom)
            yield lineno, line.rstrip("\r\n")


def parse_header(line: str, path: Path, lineno: int) -> list[AtomicField]:
    """Parse a typed header line into its fields; a field without ``:type``, an unknown type, a repeated name
    or a header that is not tab-separated raises DataFormatError naming the file and the header."""
    header = _quoted(line.strip(), 120)
    if "\t" not in line and line.count(":") > 1:
        raise DataFormatError(
            path, f"the header {header} is not tab-separated (RecBole files use tabs)", lineno
        )
    fields: list[AtomicField] = []
    for column in line.split("\t"):
        name, colon, kind = column.strip().rpartition(":")
        if not colon or not name:
            raise DataFormatError(
                path,
                f"header field {_quoted(column.strip())} has no ':type' suffix (header {header}; "
                f"types: {', '.join(RECBOLE_TYPES)})",
                lineno,
            )
        if kind not in RECBOLE_TYPES:
            raise DataFormatError(
                path,
                f"header field {_quoted(column.strip())}: unknown type {_quoted(kind)} (header {header}; "
                f"types: {', '.join(RECBOLE_TYPES)})",
                lineno,
            )
        if any(f.name == name for f in fields):
            raise DataFormatError(path, f"header field {name!r} repeated (header {header})", lineno)
        fields.append(AtomicField(name, kind))
    return fields


def _column(fields: list[AtomicField], name: str, path: Path, lineno: int) -> int | None:
    """Index of column ``name``, or None; an id column must be a token, the timestamp a float."""
    for index, f in enumerate(fields):
        if f.name == name:
            expected = "float" if name == TIME_FIELD else "token"
            if f.type != expected:
                raise DataFormatError(
                    path, f"header field '{f.name}:{f.type}': {name} must be of type {expected}", lineno
                )
            return index
    return None


def _required_column(fields: list[AtomicField], name: str, path: Path, lineno: int) -> int:
    """Index of column ``name``; a header without it raises DataFormatError quoting the header."""
    index = _column(fields, name, path, lineno)
    if index is None:
        header = "\t".join(f"{f.name}:{f.type}" for f in fields)
        raise DataFormatError(
            path,
            f"the header has no {name} field (header {_quoted(header, 120)}; expected e.g. "
            "'user_id:token<TAB>item_id:token<TAB>timestamp:float')",
            lineno,
        )
    return index


def _header(path: Path, lines: Iterator[tuple[int, str]]) -> tuple[int, list[AtomicField]]:
    """The first non-blank line of ``path`` parsed as a header; an empty file raises DataFormatError."""
    for lineno, line in lines:
        if line.strip():
            return lineno, parse_header(line, path, lineno)
    raise DataFormatError(path, "file is empty (expected a typed header such as 'user_id:token<TAB>...')")


# -------------------------------------------------------------------------------------------------- values
def _check_value(value: str, spec: AtomicField, path: Path, lineno: int) -> None:
    """Refuse a float / float_seq value that is not a number (an empty value is missing, as in RecBole)."""
    if spec.type not in ("float", "float_seq") or not value.strip():
        return
    for token in value.split() if spec.type == "float_seq" else [value.strip()]:
        try:
            float(token)
        except ValueError:
            raise DataFormatError(path, f"{spec.name} {_quoted(token)} is not a number", lineno) from None


def _split_line(line: str, fields: list[AtomicField], path: Path, lineno: int) -> list[str]:
    """The tab-separated values of a data line, one per header field, each type-checked."""
    values = line.split("\t")
    if len(values) != len(fields):
        raise DataFormatError(
            path,
            f"expected {len(fields)} tab-separated fields ({', '.join(f.name for f in fields)}), got "
            f"{len(values)}: {_quoted(line.strip(), 80)}",
            lineno,
        )
    for value, spec in zip(values, fields, strict=True):
        _check_value(value, spec, path, lineno)
    return values


def _token(value: str, name: str, path: Path, lineno: int) -> str:
    token = value.strip()
    if not token:
        raise DataFormatError(path, f"{name} is empty", lineno)
    return token


def _time(value: str, path: Path, lineno: int) -> float:
    try:
        stamp = float(value)
    except ValueError:
        raise DataFormatError(path, f"timestamp {_quoted(value.strip())} is not a number", lineno) from None
    if not math.isfinite(stamp):
        raise DataFormatError(path, f"timestamp {_quoted(value.strip())} is not a finite number", lineno)
    return stamp


# ------------------------------------------------------------------------------------------ the .inter file
@dataclass
class _Interactions:
    """``X.inter`` grouped by user token (first-appearance order): ``(time, item token)`` per line."""

    per_user: dict[str, list[tuple[float, str]]]
    has_time: bool
    lines: int
    duplicates: int
    first_duplicate: int | None


def _read_inter(path: Path) -> _Interactions:
    """Read every line of ``X.inter``; the clock is the timestamp, else the line number (file order)."""
    lines = _lines(path)
    header_line, fields = _header(path, lines)
    user_col = _required_column(fields, USER_FIELD, path, header_line)
    item_col = _required_column(fields, ITEM_FIELD, path, header_line)
    time_col = _column(fields, TIME_FIELD, path, header_line)
    data = _Interactions({}, time_col is not None, 0, 0, None)
    seen: set[tuple[str, str, float]] = set()
    for lineno, line in lines:
        if not line.strip():
            continue
        values = _split_line(line, fields, path, lineno)
        user = _token(values[user_col], USER_FIELD, path, lineno)
        item = _token(values[item_col], ITEM_FIELD, path, lineno)
        data.lines += 1
        if time_col is None:
            data.per_user.setdefault(user, []).append((float(lineno), item))
            continue
        stamp = _time(values[time_col], path, lineno)
        if (user, item, stamp) in seen:
            data.duplicates += 1
            data.first_duplicate = data.first_duplicate or lineno
            continue
        seen.add((user, item, stamp))
        data.per_user.setdefault(user, []).append((stamp, item))
    if not data.lines:
        raise DataFormatError(path, "no interactions: the file holds only its header")
    return data


# ---------------------------------------------------------------------------------------------- the k-core
def _empty_core(path: Path, which: str, minimum: int, before: tuple[int, int, int], rounds: int) -> NoReturn:
    users, items, interactions = before
    raise DataFormatError(
        path,
        f"the k-core filter (data.kcore) left nothing: the {which} filter (at least {minimum} interactions "
        f"per {which}) removed every {which} in round {rounds} ({users} users, {items} items, "
        f"{interactions} interactions before it)",
    )


def kcore_filter(
    sequences: Sequence[Sequence[H]], min_user: int, min_item: int, source: str | PathLike[str]
) -> KCoreResult:
    """The largest part of ``sequences`` where every user has >= ``min_user`` interactions and every item >=
    ``min_item``: item and user filters alternate until neither removes anything (the fixed point).

    Returns the kept row indices and items; each kept row keeps its kept items in order. When a filter
    removes everything, DataFormatError names ``source`` and the filter that emptied the data.
    """
    users = list(range(len(sequences)))
    items: frozenset | None = None
    rounds = 0  # passes that removed something
    while True:
        counts = Counter(i for u in users for i in sequences[u] if items is None or i in items)
        kept_items = frozenset(i for i, n in counts.items() if n >= min_item)
        before = (len(users), len(counts), sum(counts.values()))
        if not kept_items:
            _empty_core(Path(source), "item", min_item, before, rounds + 1)
        kept_users = [u for u in users if sum(1 for i in sequences[u] if i in kept_items) >= min_user]
        if not kept_users:
            _empty_core(Path(source), "user", min_user, before, rounds + 1)
        if kept_users == users and len(kept_items) == len(counts):
            return KCoreResult(users=users, items=kept_items, rounds=rounds)
        rounds += 1
        users, items = kept_users, kept_items


def _apply_kcore(
    data: _Interactions, kcore: int, path: Path
) -> tuple[list[str], list[list[tuple[float, str]]]]:
    """Sort each user's interactions by time (stable) and keep the k-core; returns user tokens and rows."""
    user_tokens = list(data.per_user)
    rows = [sorted(data.per_user[u], key=lambda pair: pair[0]) for u in user_tokens]
    if kcore <= 1:
        return user_tokens, rows
    core = kcore_filter([[item for _, item in row] for row in rows], kcore, kcore, path)
    kept_rows = [[pair for pair in rows[u] if pair[1] in core.items] for u in core.users]
    removed = sum(len(row) for row in rows) - sum(len(row) for row in kept_rows)
    logger.info(
        "%s: data.kcore=%d kept %d of %d users and %d items after %d round(s) (%d interactions removed)",
        path,
        kcore,
        len(core.users),
        len(rows),
        len(core.items),
        core.rounds,
        removed,
    )
    return [user_tokens[u] for u in core.users], kept_rows


# ------------------------------------------------------------------------------------------- the .item file
def _categories(value: str) -> tuple[str, ...]:
    """A category list: comma- or ``|``-separated when it holds one, else RecBole's space-separated tokens."""
    cleaned = value.strip().strip("[]")
    for separator in (",", "|"):
        if separator in cleaned:
            parts = cleaned.split(separator)
            break
    else:
        parts = cleaned.split()
    return tuple(part.strip().strip("'\"").strip() for part in parts if part.strip().strip("'\"").strip())


def _price(value: str, path: Path, lineno: int) -> float | None:
    if not value.strip():
        return None
    price = float(value)  # _split_line has checked that a float column holds a number
    if not math.isfinite(price) or price < 0:
        raise DataFormatError(path, f"price {_quoted(value.strip())} is not a number >= 0", lineno)
    return price


def _item_text(values: list[str], columns: dict[str, int], path: Path, lineno: int) -> ItemText:
    """The text fields of one ``.item`` line."""

    def text(name: str) -> str | None:
        if name not in columns:
            return None
        return " ".join(values[columns[name]].split()) or None

    return ItemText(
        title=text("title"),
        brand=text("brand"),
        categories=_categories(values[columns["categories"]]) if "categories" in columns else (),
        description=text("description"),
        price=_price(values[columns["price"]], path, lineno) if "price" in columns else None,
    )


def _text_columns(fields: list[AtomicField]) -> dict[str, int]:
    """``{ItemText field: column index}`` for the ``.item`` columns that carry text (first match wins)."""
    columns: dict[str, int] = {}
    for target, names in TEXT_COLUMNS.items():
        for index, spec in enumerate(fields):
            if spec.name.lower() in names and target not in columns:
                if target == "price" and spec.type != "float":
                    continue
                columns[target] = index
    return columns


def _read_item_file(path: Path, item_ids: dict[str, int]) -> dict[int, ItemText]:
    """Read ``X.item`` into ``{numbered item id: ItemText}`` for the items the interactions kept."""
    lines = _lines(path)
    header_line, fields = _header(path, lines)
    item_col = _required_column(fields, ITEM_FIELD, path, header_line)
    columns = _text_columns(fields)
    if not columns:
        logger.warning("%s: no text column (title, brand, categories, ...): items have no text", path)
    texts: dict[int, ItemText] = {}
    first_line: dict[str, int] = {}
    unused = 0
    for lineno, line in lines:
        if not line.strip():
            continue
        values = _split_line(line, fields, path, lineno)
        token = _token(values[item_col], ITEM_FIELD, path, lineno)
        if token in first_line:
            raise DataFormatError(
                path, f"item_id {_quoted(token)} repeated (first on line {first_line[token]})", lineno
            )
        first_line[token] = lineno
        if token not in item_ids:
            unused += 1
            continue
        text = _item_text(values, columns, path, lineno)
        if not text.is_empty:
            texts[item_ids[token]] = text
    if unused:
        logger.info("%s: %d item line(s) name items without kept interactions, not used", path, unused)
    return texts


# ----------------------------------------------------------------------------------------------- the whole
def read_recbole_files(path: str | PathLike[str], kcore: int = 0) -> RecBoleData:
    """Read a RecBole dataset: ``path`` is ``X.inter`` or a folder holding it; ``X.item`` beside it is read
    when present. ``kcore`` > 1 keeps the k-core (every user and item with >= ``kcore`` interactions)."""
    inter = resolve_inter_file(path)
    data = _read_inter(inter)
    if data.duplicates:
        logger.warning(
            "%s: %d duplicate line(s) (same user, item and timestamp as an earlier line; first on line %d) "
            "dropped",
            inter,
            data.duplicates,
            data.first_duplicate,
        )
    user_tokens, rows = _apply_kcore(data, kcore, inter)
    item_ids: dict[str, int] = {}
    for row in rows:
        for _, item in row:
            item_ids.setdefault(item, len(item_ids) + 1)
    item_file = inter.with_suffix(".item")
    item_text = _read_item_file(item_file, item_ids) if item_file.is_file() else {}
    logger.info(
        "%s: %d lines, %d users, %d items, text for %d items%s",
        inter,
        data.lines,
        len(user_tokens),
        len(item_ids),
        len(item_text),
        "" if item_file.is_file() else f" ({item_file.name} not found)",
    )
    return RecBoleData(
        inter_file=inter,
        user_tokens=user_tokens,
        item_tokens=list(item_ids),
        sequences=[[item_ids[item] for _, item in row] for row in rows],
        timestamps=[[stamp for stamp, _ in row] for row in rows] if data.has_time else None,
        item_text=item_text,
    )
