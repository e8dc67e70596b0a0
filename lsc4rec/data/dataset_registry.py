"""Named datasets: the embedded Amazon Beauty copy, and MovieLens/any other data from a user-supplied path."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from lsc4rec.data.errors import DataFileNotFoundError
from lsc4rec.data.item_text import text_file_beside
from lsc4rec.data.readers import RawDataset, load_raw

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedDataset:
    """A dataset shipped inside the package: folder, interaction file, format, attributes and item text."""

    folder: str
    file: str
    format: str
    attributes: str | None = None
    text: str | None = None
    description: str = ""


#: Datasets shipped with the package (licence and origin in each folder's ATTRIBUTION.md).
EMBEDDED_DATASETS: dict[str, EmbeddedDataset] = {
    "beauty": EmbeddedDataset(
        folder="beauty",
        file="Beauty.txt",
        format="sequence",
        attributes="Beauty_item2attributes.json",
        text="Beauty_item_text.jsonl.gz",
        description="Amazon Beauty, S3-Rec/P5 5-core: 22,363 users, 12,101 items, 198,502 interactions",
    ),
}

#: Names that mean MovieLens, which GroupLens's terms forbid redistributing: these always need a path.
MOVIELENS_NAMES: tuple[str, ...] = ("ml-100k", "ml100k", "movielens-100k", "ml-1m", "ml1m", "movielens-1m")


def _embedded(name: str) -> EmbeddedDataset:
    """Look up an embedded dataset by (case-insensitive) name; ValueError lists the known ones."""
    try:
        return EMBEDDED_DATASETS[name.lower()]
    except KeyError:
        raise ValueError(
            f"no embedded dataset {name!r}; embedded datasets: {', '.join(sorted(EMBEDDED_DATASETS))}"
        ) from None


def _package_dir() -> Path:
    """Folder of this package on disk (the embedded data sits next to the modules, also when installed)."""
    return Path(__file__).resolve().parent


def _embedded_folder(entry: EmbeddedDataset) -> Path:
    """Folder holding the embedded files: next to this module, or in another copy of the package on sys.path.

    A Flower app bundle (FAB) carries code and small text files, not ``.txt`` data, and the SuperNode puts
    the bundle first on ``sys.path``; the data then comes from the installed package further down the path.
    ``$LSC4REC_DATA_DIR/<folder>`` wins over both (devices that keep data elsewhere).
    """
    candidates = []
    if os.environ.get("LSC4REC_DATA_DIR"):
        candidates.append(Path(os.environ["LSC4REC_DATA_DIR"]) / entry.folder)
    candidates.append(_package_dir() / entry.folder)
    candidates += [Path(p) / "lsc4rec" / "data" / entry.folder for p in sys.path if p]
    for folder in candidates:
        if (folder / entry.file).is_file():
            return folder
    return candidates[0]


def embedded_path(name: str) -> Path:
    """Path of the interaction file of embedded dataset ``name`` (e.g. ``.../beauty/Beauty.txt``)."""
    entry = _embedded(name)
    path = _embedded_folder(entry) / entry.file
    if not path.is_file():
        raise DataFileNotFoundError(path, f"the embedded {name!r} data shipped with lsc4rec (bad install?)")
    return path


def embedded_attributes_path(name: str) -> Path | None:
    """Path of the item-attribute JSON of embedded dataset ``name``, or None if it has none."""
    entry = _embedded(name)
    return None if entry.attributes is None else _embedded_folder(entry) / entry.attributes


def embedded_text_path(name: str) -> Path | None:
    """Path of the item text of embedded dataset ``name``, or None if it has none."""
    entry = _embedded(name)
    return None if entry.text is None else _embedded_folder(entry) / entry.text


def load_dataset(
    name: str,
    path: str | PathLike[str] | None = None,
    format: str = "auto",
    text_path: str | PathLike[str] | None = None,
    kcore: int = 0,
) -> RawDataset:
    """Load dataset ``name``: the embedded copy when ``path`` is empty, otherwise the data at ``path``.

    - ``"beauty"`` without a path loads the embedded copy with its item attributes and item text.
    - MovieLens names (``ml-100k``, ``ml100k``, ``ml-1m``, ...) require a path: the files cannot be shipped;
      their titles and genres become the item text.
    - Any name with a path loads that path (``format`` as in :func:`~lsc4rec.data.readers.load_raw`); for a
      sequence file ``X.txt`` an ``X_item2attributes.json`` next to it is loaded as item attributes, and an
      ``X_item_text.jsonl`` (or ``.jsonl.gz``) as item text.
    - ``text_path`` (``data.text_path``) names an item text file explicitly and wins over the others.
    - ``kcore`` (``data.kcore``) > 1 keeps the k-core: users and items with at least that many interactions
      (:func:`~lsc4rec.data.readers.load_raw`).
    - A RecBole folder or ``X.inter`` file (``data.format=recbole`` or ``auto``) takes its item text from
      ``X.item`` beside it (:mod:`lsc4rec.data.recbole`).
    - An unknown name without a path raises ValueError listing the embedded datasets.
    """
    if text_path is not None and str(text_path).strip() == "":
        text_path = None
    key = name.strip().lower()
    if path is None or str(path).strip() == "":
        if key in MOVIELENS_NAMES:
            raise ValueError(
                f"dataset {name!r}: MovieLens cannot be shipped with lsc4rec (the GroupLens terms forbid "
                "redistribution); download it from grouplens.org and pass the folder holding u.data/u.item "
                "(ML-100K) or ratings.dat/movies.dat (ML-1M) with data.path=..., e.g. "
                f"`dataset=ml100k data.path=/abs/path/{key}`"
            )
        if key not in EMBEDDED_DATASETS:
            raise ValueError(
                f"unknown dataset {name!r} and no data.path given; embedded datasets: "
                f"{', '.join(sorted(EMBEDDED_DATASETS))} (or pass data.path=/abs/path/to/file-or-folder)"
            )
        entry = EMBEDDED_DATASETS[key]
        return load_raw(
            embedded_path(key),
            format=entry.format,
            attributes_path=embedded_attributes_path(key),
            name=key,
            text_path=text_path if text_path is not None else embedded_text_path(key),
            kcore=kcore,
        )

    data_path = Path(path).expanduser()
    attributes: Path | None = None
    if data_path.is_file():
        # The S3-Rec convention keeps attributes beside the sequence file as <stem>_item2attributes.json.
        candidate = data_path.with_name(f"{data_path.stem}_item2attributes.json")
        if candidate.is_file():
            attributes = candidate
            logger.info("using item attributes from %s", candidate)
        if text_path is None:
            text_path = text_file_beside(data_path)
            if text_path is not None:
                logger.info("using item text from %s", text_path)
    return load_raw(
        data_path, format=format, attributes_path=attributes, name=name, text_path=text_path, kcore=kcore
    )
