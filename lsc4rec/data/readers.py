"""Readers for the raw interaction formats: S3-Rec/P5 sequence files, SASRec pair files, MovieLens folders and
RecBole atomic files (:mod:`lsc4rec.data.recbole`).

Every reader returns raw (file) ids; the mapping to contiguous internal ids happens in
:mod:`lsc4rec.data.split` (RecBole's text tokens are first numbered 1..N, the tokens kept beside them).
An optional k-core filter (``data.kcore``, :func:`load_raw`) keeps the users and items with enough
interactions, for every format.
Malformed content raises :class:`DataFormatError` naming the file, the 1-based line and the offending value;
missing files raise :class:`DataFileNotFoundError`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from lsc4rec.data.errors import (
    RAW_ID_MAX,
    RAW_ID_MIN,
    DataFileNotFoundError,
    DataFormatError,
    id_range_problem,
)
from lsc4rec.data.item_text import ItemText, check_text_items, item_text_from_titles, read_item_text
from lsc4rec.data.recbole import is_recbole_folder, kcore_filter, read_recbole_files

logger = logging.getLogger(__name__)

#: Values accepted by :func:`load_raw`'s ``format`` argument.
FORMATS: tuple[str, ...] = ("auto", "sequence", "pairs", "movielens", "recbole")

#: What a data path may name, for "not found" messages.
_ANY_DATA = "a sequence file, a pair file, a MovieLens folder/ratings file or a RecBole folder/.inter file"

#: Genre names of the 19 ``u.item`` flags, used when the folder has no ``u.genre``.
ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

# ASCII-only on purpose: int() also accepts '1_000', '+5' and non-ASCII digits, never valid ids here.
_INT_TOKEN = re.compile(r"-?\d+", re.ASCII)
_INT_LINE = re.compile(r"\s*-?\d+(?:\s+-?\d+)*\s*", re.ASCII)
_SNIFF_LINES = 20


@dataclass
class RawDataset:
    """Interactions as read from disk, in raw (file) ids.

    ``sequences[k]`` holds the raw item ids of user ``user_ids[k]`` in chronological order. Item side
    information (titles, genres, attribute ids, item text) is keyed by raw item id and may be empty.
    """

    name: str
    source: Path
    user_ids: list[int]
    sequences: list[list[int]]
    item_titles: dict[int, str] = field(default_factory=dict)
    item_genres: dict[int, list[str]] = field(default_factory=dict)
    item_attributes: dict[int, list[int]] = field(default_factory=dict)
    item_text: dict[int, ItemText] = field(default_factory=dict)
    #: Time of each interaction, parallel to ``sequences`` (MovieLens); None where the file has no clock.
    timestamps: list[list[float]] | None = None
    #: Formats with text ids (RecBole): raw user / item id -> the file's token; empty for integer formats.
    user_tokens: dict[int, str] = field(default_factory=dict)
    item_tokens: dict[int, str] = field(default_factory=dict)

    @property
    def num_interactions(self) -> int:
        """Total number of interactions over all users."""
        return sum(len(seq) for seq in self.sequences)

    @property
    def num_users(self) -> int:
        """Number of users (lines of a sequence file, distinct users otherwise)."""
        return len(self.user_ids)


def _require_file(path: str | PathLike[str], expected: str) -> Path:
    """Return ``path`` as a Path, raising DataFileNotFoundError when it is not an existing file."""
    p = Path(path).expanduser()
    if not p.is_file():
        if p.is_dir():
            raise DataFileNotFoundError(p, f"{expected}, but this is a folder")
        raise DataFileNotFoundError(p, expected)
    return p


#: A UTF-8 byte-order mark (spreadsheet exports start with one) as a UTF-8 and as a Latin-1 reader sees it.
_BOMS = ("\ufeff", "\xef\xbb\xbf")


def _nonblank_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line)`` for every non-blank line of ``path`` (a leading byte-order mark
    is dropped: it is an encoding marker, not content)."""
    # errors="replace": a stray byte then surfaces as a 'not an integer' error on its line, not UnicodeError.
    with path.open("r", encoding=encoding, errors="replace") as handle:
        for lineno, line in enumerate(handle, start=1):
            if lineno == 1:
                for bom in _BOMS:
                    line = line.removeprefix(bom)
            if line.strip():
                yield lineno, line


def _to_int(token: str, path: Path, lineno: int, what: str) -> int:
    """Parse one integer field or raise a DataFormatError naming the field and its value."""
    if _INT_TOKEN.fullmatch(token) is None:
        raise DataFormatError(path, f"{what} {_quoted(token)} is not an integer", lineno)
    value = int(token)
    problem = id_range_problem(value, what)
    if problem:
        raise DataFormatError(path, f"{problem}; remap the ids, e.g. to 1..N", lineno)
    return value


def _quoted(token: str, limit: int = 40) -> str:
    """``token`` quoted for a message, cut to ``limit`` characters (a hostile line may hold megabytes)."""
    if len(token) <= limit:
        return repr(token)
    return f"{token[:limit]!r}... ({len(token)} characters)"


def _to_number(token: str, path: Path, lineno: int, what: str) -> float:
    """Parse a rating/timestamp field (int or float) or raise a DataFormatError naming it."""
    try:
        return float(token)
    except ValueError:
        raise DataFormatError(path, f"{what} {_quoted(token)} is not a number", lineno) from None


def _int_fields(line: str, path: Path, lineno: int) -> list[int]:
    """Split a whitespace-separated line of ids: field 1 is the user id, the rest are item ids."""
    if _INT_LINE.fullmatch(line) is not None:
        # Fast path: the regex has vetted every token, so int() cannot fail or accept odd spellings; only the
        # range is left to check (the slow path below names the offending field).
        values = [int(tok) for tok in line.split()]
        if min(values) >= RAW_ID_MIN and max(values) <= RAW_ID_MAX:
            return values
    tokens = line.split()
    return [_to_int(tok, path, lineno, "user id" if i == 0 else "item id") for i, tok in enumerate(tokens)]


def read_sequence_file(path: str | PathLike[str]) -> RawDataset:
    """Read an S3-Rec/P5 sequence file: one user per line, ``user item item ...``, items chronological.

    Blank lines are ignored. A user with no items, a repeated user id, a non-integer token or an empty file
    raises DataFormatError naming the file, line and value.
    """
    p = _require_file(path, "a sequence file with 'user item item ...' per line")
    user_ids: list[int] = []
    sequences: list[list[int]] = []
    first_line: dict[int, int] = {}
    for lineno, line in _nonblank_lines(p):
        values = _int_fields(line, p, lineno)
        user = values[0]
        if len(values) < 2:
            raise DataFormatError(p, f"user {user} has no items (expected 'user item item ...')", lineno)
        if user in first_line:
            raise DataFormatError(
                p,
                f"user id {user} repeated (first on line {first_line[user]}); a sequence file has one line "
                "per user (a 'user item' pair file? use format='pairs'; 'user item rating time'? "
                "format='movielens')",
                lineno,
            )
        first_line[user] = lineno
        user_ids.append(user)
        sequences.append(values[1:])
    if not user_ids:
        raise DataFormatError(p, "file is empty (expected 'user item item ...' per line)")
    return RawDataset(name=p.stem, source=p, user_ids=user_ids, sequences=sequences)


def read_pair_file(path: str | PathLike[str]) -> RawDataset:
    """Read a SASRec pair file: ``user item`` per line in chronological order.

    Each user's items keep file order; users are listed in order of first appearance. Blank lines are ignored.
    A line with other than 2 fields, a non-integer id or an empty file raises DataFormatError.
    """
    p = _require_file(path, "a pair file with 'user item' per line")
    by_user: dict[int, list[int]] = {}
    for lineno, line in _nonblank_lines(p):
        tokens = line.split()
        if len(tokens) != 2:
            raise DataFormatError(
                p, f"expected 2 fields 'user item', got {len(tokens)}: {line.strip()!r}", lineno
            )
        user = _to_int(tokens[0], p, lineno, "user id")
        item = _to_int(tokens[1], p, lineno, "item id")
        by_user.setdefault(user, []).append(item)
    if not by_user:
        raise DataFormatError(p, "file is empty (expected 'user item' per line)")
    return RawDataset(name=p.stem, source=p, user_ids=list(by_user), sequences=list(by_user.values()))


def _resolve_movielens(path: Path) -> Path:
    """Return the ratings file of a MovieLens folder (``u.data`` or ``ratings.dat``) or the file itself."""
    if path.is_dir():
        for candidate in ("u.data", "ratings.dat"):
            if (path / candidate).is_file():
                return path / candidate
        raise DataFileNotFoundError(
            path / "u.data", "a MovieLens folder holding u.data (ML-100K) or ratings.dat (ML-1M)"
        )
    return _require_file(path, "a MovieLens folder or ratings file (u.data or ratings.dat)")


def _ratings_separator(ratings: Path) -> str | None:
    """``'::'`` for ML-1M style files, ``None`` (any whitespace) for ML-100K ``u.data`` style files."""
    if ratings.name == "u.data":
        return None
    if ratings.name == "ratings.dat":
        return "::"
    for _, line in _nonblank_lines(ratings, encoding="latin-1"):
        return "::" if "::" in line else None
    return None


def _read_genre_names(path: Path) -> list[str]:
    """Read ``u.genre`` (``name|index`` per line) into the list of genre names ordered by index."""
    named: list[tuple[int, str]] = []
    for lineno, line in _nonblank_lines(path, encoding="latin-1"):
        parts = line.rstrip("\r\n").split("|")
        if len(parts) != 2:
            raise DataFormatError(path, f"expected 'name|index', got {line.strip()!r}", lineno)
        named.append((_to_int(parts[1], path, lineno, "genre index"), parts[0]))
    named.sort()
    if [index for index, _ in named] != list(range(len(named))):
        raise DataFormatError(path, f"genre indices {[i for i, _ in named]} are not 0..{len(named) - 1}")
    return [name for _, name in named]


def _read_u_item(path: Path, genre_names: list[str]) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Read ML-100K ``u.item``: ``id|title|release|video release|IMDb URL|<one 0/1 flag per genre>``."""
    titles: dict[int, str] = {}
    genres: dict[int, list[str]] = {}
    n = len(genre_names)
    for lineno, line in _nonblank_lines(path, encoding="latin-1"):
        fields = line.rstrip("\r\n").split("|")
        if len(fields) < 5 + n:
            raise DataFormatError(
                path,
                f"expected {5 + n} '|'-separated fields (id, title, 3 dates/URL, {n} genre flags), "
                f"got {len(fields)}: {line.strip()[:80]!r}",
                lineno,
            )
        item = _to_int(fields[0], path, lineno, "item id")
        if item in titles:
            raise DataFormatError(path, f"item id {item} repeated", lineno)
        flags = fields[len(fields) - n :]
        bad = [flag for flag in flags if flag not in ("0", "1")]
        if bad:
            raise DataFormatError(path, f"item {item}: genre flag {bad[0]!r} is not 0 or 1", lineno)
        # Joining keeps a title intact should it ever contain the separator itself.
        titles[item] = "|".join(fields[1 : len(fields) - n - 3])
        genres[item] = [name for name, flag in zip(genre_names, flags, strict=True) if flag == "1"]
    return titles, genres


def _read_movies_dat(path: Path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Read ML-1M ``movies.dat``: ``id::title::Genre|Genre``."""
    titles: dict[int, str] = {}
    genres: dict[int, list[str]] = {}
    for lineno, line in _nonblank_lines(path, encoding="latin-1"):
        parts = line.rstrip("\r\n").split("::")
        if len(parts) < 3:
            raise DataFormatError(path, f"expected 'id::title::genres', got {line.strip()[:80]!r}", lineno)
        item = _to_int(parts[0], path, lineno, "item id")
        if item in titles:
            raise DataFormatError(path, f"item id {item} repeated", lineno)
        titles[item] = "::".join(parts[1:-1])
        names = parts[-1].strip()
        genres[item] = [] if names in ("", "(no genres listed)") else names.split("|")
    return titles, genres


_NUMBER = r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"
_ML_LINE_WHITESPACE = re.compile(rf"\s*(-?\d+)\s+(-?\d+)\s+({_NUMBER})\s+({_NUMBER})\s*", re.ASCII)
_ML_LINE_COLONS = re.compile(rf"\s*(-?\d+)::(-?\d+)::({_NUMBER})::({_NUMBER})\s*", re.ASCII)


def _diagnose_rating_line(
    line: str, separator: str | None, path: Path, lineno: int, layout: str
) -> tuple[int, int, float, float]:
    """Parse a ratings line field by field, raising a DataFormatError that names the bad field."""
    fields = line.strip().split(separator)
    if len(fields) != 4:
        raise DataFormatError(
            path, f"expected 4 fields {layout}, got {len(fields)}: {line.strip()[:80]!r}", lineno
        )
    return (
        _to_int(fields[0].strip(), path, lineno, "user id"),
        _to_int(fields[1].strip(), path, lineno, "item id"),
        _to_number(fields[2].strip(), path, lineno, "rating"),
        _to_number(fields[3].strip(), path, lineno, "timestamp"),
    )


def read_movielens(path: str | PathLike[str], min_rating: float | None = None) -> RawDataset:
    """Read a MovieLens folder (``u.data`` + ``u.item``, or ``ratings.dat`` + ``movies.dat``) or ratings file.

    Each user's ratings become one sequence sorted by timestamp; ties keep file order (stable sort). Users are
    listed in ascending raw id. ``min_rating`` keeps only ratings >= it and logs how many were removed. Titles
    and genres come from the item file next to the ratings; if it is missing they are empty and a warning is
    logged.
    """
    ratings = _resolve_movielens(Path(path).expanduser())
    separator = _ratings_separator(ratings)
    layout = "'user::item::rating::timestamp'" if separator else "'user<TAB>item<TAB>rating<TAB>timestamp'"
    fast = _ML_LINE_COLONS if separator else _ML_LINE_WHITESPACE
    per_user: dict[int, list[tuple[float, int]]] = {}
    total = removed = 0
    for lineno, line in _nonblank_lines(ratings, encoding="latin-1"):
        match = fast.fullmatch(line)
        if match is not None:
            # Fast path: one C-level regex vets all four fields, so the conversions below cannot fail; an id
            # outside 64 bits goes to _to_int, which refuses it naming the field.
            user, item = int(match[1]), int(match[2])
            if not (RAW_ID_MIN <= user <= RAW_ID_MAX and RAW_ID_MIN <= item <= RAW_ID_MAX):
                _to_int(match[1], ratings, lineno, "user id")
                _to_int(match[2], ratings, lineno, "item id")
            rating, timestamp = float(match[3]), float(match[4])
        else:
            user, item, rating, timestamp = _diagnose_rating_line(line, separator, ratings, lineno, layout)
        total += 1
        if min_rating is not None and rating < min_rating:
            removed += 1
            continue
        per_user.setdefault(user, []).append((timestamp, item))
    if total == 0:
        raise DataFormatError(ratings, f"file is empty (expected {layout} per line)")
    if min_rating is not None:
        logger.info(
            "%s: min_rating=%s removed %d of %d ratings (%d kept, %d users left)",
            ratings,
            min_rating,
            removed,
            total,
            total - removed,
            len(per_user),
        )
    if not per_user:
        raise DataFormatError(ratings, f"no rating is >= min_rating={min_rating} ({total} ratings read)")

    user_ids = sorted(per_user)
    # list.sort is stable, so equal timestamps keep their order of appearance in the file.
    ordered = [sorted(per_user[u], key=lambda pair: pair[0]) for u in user_ids]
    sequences = [[item for _, item in pairs] for pairs in ordered]

    rated = {item for seq in sequences for item in seq}
    folder = ratings.parent
    item_file = folder / ("u.item" if separator is None else "movies.dat")
    titles: dict[int, str] = {}
    genres: dict[int, list[str]] = {}
    if not item_file.is_file():
        logger.warning("%s not found: item titles and genres are empty", item_file)
    elif separator is None:
        genre_file = folder / "u.genre"
        genre_names = _read_genre_names(genre_file) if genre_file.is_file() else list(ML100K_GENRES)
        titles, genres = _read_u_item(item_file, genre_names)
    else:
        titles, genres = _read_movies_dat(item_file)
    name = folder.name or ratings.stem
    return RawDataset(
        name=name,
        source=ratings,
        user_ids=user_ids,
        sequences=sequences,
        item_titles=titles,
        item_genres=genres,
        timestamps=[[stamp for stamp, _ in pairs] for pairs in ordered],
        item_text=item_text_from_titles(
            {i: t for i, t in titles.items() if i in rated}, {i: g for i, g in genres.items() if i in rated}
        ),
    )


def read_recbole(path: str | PathLike[str], kcore: int = 0) -> RawDataset:
    """Read RecBole atomic files (``X.inter``, or a folder holding it, and ``X.item`` when present).

    User and item tokens are numbered 1..N (:mod:`lsc4rec.data.recbole`); ``user_tokens`` / ``item_tokens``
    map the numbers back. ``kcore`` > 1 keeps the k-core before numbering, so the ids stay contiguous.
    """
    data = read_recbole_files(path, kcore=kcore)
    folder = data.inter_file.parent
    return RawDataset(
        name=data.inter_file.stem or folder.name,
        source=data.inter_file,
        user_ids=list(range(1, len(data.user_tokens) + 1)),
        sequences=data.sequences,
        timestamps=data.timestamps,
        item_text=data.item_text,
        user_tokens=dict(enumerate(data.user_tokens, start=1)),
        item_tokens=dict(enumerate(data.item_tokens, start=1)),
    )


def apply_kcore(raw: RawDataset, kcore: int) -> RawDataset:
    """Keep the k-core of ``raw`` in place (every user and item with >= ``kcore`` interactions, to the fixed
    point) and drop the side information of the items it removes; logs what it removed."""
    if kcore <= 1:
        return raw
    core = kcore_filter(raw.sequences, kcore, kcore, raw.source)
    before_users, before = raw.num_users, raw.num_interactions
    keep = [[item in core.items for item in raw.sequences[u]] for u in core.users]
    raw.sequences = [
        [i for i, k in zip(raw.sequences[u], row, strict=True) if k]
        for u, row in zip(core.users, keep, strict=True)
    ]
    if raw.timestamps is not None:
        raw.timestamps = [
            [t for t, k in zip(raw.timestamps[u], row, strict=True) if k]
            for u, row in zip(core.users, keep, strict=True)
        ]
    raw.user_ids = [raw.user_ids[u] for u in core.users]
    for side in ("item_titles", "item_genres", "item_attributes", "item_text", "item_tokens"):
        setattr(raw, side, {i: v for i, v in getattr(raw, side).items() if i in core.items})
    logger.info(
        "%s: data.kcore=%d kept %d of %d users and %d items after %d round(s) (%d of %d interactions kept)",
        raw.source,
        kcore,
        raw.num_users,
        before_users,
        len(core.items),
        core.rounds,
        raw.num_interactions,
        before,
    )
    return raw


def read_item_attributes(path: str | PathLike[str]) -> dict[int, list[int]]:
    """Read an S3-Rec attribute file ``{"item": [attr, ...]}`` into ``{item id: [attribute ids]}``.

    A non-integer key, a non-list value or a non-integer attribute raises DataFormatError naming the key.
    """
    p = _require_file(path, 'a JSON object {"item id": [attribute id, ...]}')
    try:
        with p.open("r", encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFormatError(p, f"invalid JSON: {error.msg} (column {error.colno})", error.lineno) from None
    except UnicodeDecodeError as error:
        raise DataFormatError(p, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(data, dict):
        raise DataFormatError(p, f'expected a JSON object {{"item id": [...]}}, got {type(data).__name__}')
    attributes: dict[int, list[int]] = {}
    for key, values in data.items():
        if _INT_TOKEN.fullmatch(key.strip()) is None:
            raise DataFormatError(p, f"item key {key!r} is not an integer")
        if not isinstance(values, list):
            raise DataFormatError(p, f"item {key!r}: expected a list of attribute ids, got {values!r}")
        for value in values:
            # bool is an int subclass in Python, but 'true' is never a valid attribute id.
            if not isinstance(value, int) or isinstance(value, bool):
                raise DataFormatError(p, f"item {key!r}: attribute {value!r} is not an integer")
        attributes[int(key)] = list(values)
    return attributes


def detect_format(path: str | PathLike[str]) -> str:
    """Guess the format of ``path``: ``"sequence"``, ``"pairs"``, ``"movielens"`` or ``"recbole"``.

    A folder holding ``u.data``/``ratings.dat``, a file with one of those names, or a ``::``-separated file is
    MovieLens; a folder holding a ``*.inter`` file, or a file ending in ``.inter``, is RecBole. Otherwise the
    first non-empty lines are sniffed: exactly two integer fields on every line means pairs, integer lines
    with two or more fields mean a sequence file. Anything else raises DataFormatError.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "u.data").is_file() or (p / "ratings.dat").is_file():
            return "movielens"
        if is_recbole_folder(p):
            return "recbole"
        listing = sorted(child.name for child in p.iterdir())[:10]
        raise DataFormatError(
            p,
            "unknown format: a folder without u.data or ratings.dat (MovieLens) or X.inter (RecBole) "
            f"(it holds {listing or 'nothing'})",
        )
    if not p.exists():
        raise DataFileNotFoundError(p, _ANY_DATA)
    if p.name in ("u.data", "ratings.dat"):
        return "movielens"
    if p.suffix == ".inter":
        return "recbole"
    sniffed: list[tuple[int, str]] = []
    for lineno, line in _nonblank_lines(p):
        sniffed.append((lineno, line))
        if len(sniffed) >= _SNIFF_LINES:
            break
    if not sniffed:
        raise DataFormatError(p, "unknown format: the file is empty")
    if all("::" in line for _, line in sniffed):
        return "movielens"
    for lineno, line in sniffed:
        if _INT_LINE.fullmatch(line) is None:
            raise DataFormatError(
                p,
                f"unknown format: saw {line.strip()[:80]!r}, expected whitespace-separated integer ids "
                "('user item item ...' or 'user item') or a MovieLens file",
                lineno,
            )
    widths = [len(line.split()) for _, line in sniffed]
    if all(width == 2 for width in widths):
        return "pairs"
    if any(width >= 2 for width in widths):
        # A one-field line among them is reported precisely (file/line/user) by the sequence reader.
        return "sequence"
    raise DataFormatError(
        p,
        f"unknown format: every line holds a single id (saw {sniffed[0][1].strip()!r}), expected user+items",
        sniffed[0][0],
    )


def load_raw(
    path: str | PathLike[str],
    format: str = "auto",
    attributes_path: str | PathLike[str] | None = None,
    name: str | None = None,
    text_path: str | PathLike[str] | None = None,
    kcore: int = 0,
) -> RawDataset:
    """Read a dataset in any supported ``format`` (:data:`FORMATS`; ``"auto"`` uses :func:`detect_format`).

    ``attributes_path`` optionally adds item attribute ids (:func:`read_item_attributes`); ``text_path`` adds
    item text (:func:`~lsc4rec.data.item_text.read_item_text`, replacing MovieLens titles/genres and RecBole's
    ``X.item``), which must only name items of the interactions; ``name`` defaults to the file stem (the
    folder name for MovieLens). ``kcore`` (``data.kcore``) > 1 keeps only users and items with at least that
    many interactions, filtering both until neither changes (0 or 1: no filter).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; valid formats: {', '.join(FORMATS)}")
    if isinstance(kcore, bool) or not isinstance(kcore, int) or kcore < 0:
        raise ValueError(f"data.kcore must be a whole number >= 0 (0 = no k-core filter), got {kcore!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataFileNotFoundError(p, _ANY_DATA)
    resolved = detect_format(p) if format == "auto" else format
    if resolved == "recbole":
        raw = read_recbole(p, kcore=kcore)
    elif resolved == "sequence":
        raw = read_sequence_file(p)
    elif resolved == "pairs":
        raw = read_pair_file(p)
    else:
        raw = read_movielens(p)
    if attributes_path is not None:
        raw.item_attributes = read_item_attributes(attributes_path)
    if text_path is not None:
        raw.item_text = read_item_text(text_path)
        check_text_items(raw.item_text, (item for seq in raw.sequences for item in seq), text_path)
    if resolved != "recbole":
        apply_kcore(raw, kcore)
    if name is not None:
        raw.name = name
    logger.info(
        "loaded %s (%s) from %s: %d users, %d interactions, text for %d items",
        raw.name,
        resolved,
        raw.source,
        raw.num_users,
        raw.num_interactions,
        sum(1 for text in raw.item_text.values() if not text.is_empty),
    )
    return raw
