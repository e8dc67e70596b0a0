"""An on-disk cache of text vectors keyed by (encoder, text), so a second run never re-encodes a text.

One ``<encoder key>.npz`` file per encoder holds the SHA-256 digests of the texts and their vectors; new
vectors are merged in and the file is replaced atomically, so a crash never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["TextVectorCache", "default_cache_dir", "text_digest"]


def default_cache_dir() -> Path:
    """``$LSC4REC_CACHE_DIR/text_vectors``, else ``~/.cache/lsc4rec/text_vectors``."""
    root = os.environ.get("LSC4REC_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "lsc4rec"
    return base / "text_vectors"


def text_digest(text: str) -> str:
    """The cache key of one text (SHA-256 of its UTF-8 bytes, hex)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextVectorCache:
    """Vectors of texts for one encoder (``encoder_key`` names the model and how it pools), stored on disk."""

    def __init__(self, directory: str | os.PathLike[str], encoder_key: str) -> None:
        """Cache under ``directory`` for the encoder named ``encoder_key``."""
        self.directory = Path(directory).expanduser()
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_key)
        self.path = self.directory / f"{safe}.npz"
        self._vectors: dict[str, np.ndarray] = {}
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.path.is_file():
            return
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
        except (OSError, ValueError, KeyError) as error:
            # A damaged cache only costs time: warn, start empty, and overwrite it on the next save.
            logger.warning("text vector cache %s is unreadable (%s); re-encoding", self.path, error)
            return
        self._vectors = {str(k): v for k, v in zip(keys, vectors, strict=True)}

    def __len__(self) -> int:
        """Number of cached texts."""
        self._load()
        return len(self._vectors)

    def _save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._vectors), dtype="U64")
        vectors = np.stack(list(self._vectors.values())).astype(np.float32)
        handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, keys=keys, vectors=vectors)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get_or_encode(
        self, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray]
    ) -> tuple[np.ndarray, int]:
        """Vectors ``[len(texts), D]`` of ``texts``: cached ones read, the rest encoded once and stored.

        Returns the vectors and how many texts had to be encoded.
        """
        self._load()
        digests = [text_digest(t) for t in texts]
        missing = list(dict.fromkeys(d for d in digests if d not in self._vectors))
        if missing:
            first_text = {d: t for d, t in zip(digests, texts, strict=True)}
            fresh = np.asarray(encode([first_text[d] for d in missing]), dtype=np.float32)
            if fresh.ndim != 2 or fresh.shape[0] != len(missing):
                raise ValueError(f"the text encoder returned shape {fresh.shape} for {len(missing)} texts")
            if self._vectors:
                width = next(iter(self._vectors.values())).shape[0]
                if fresh.shape[1] != width:
                    raise ValueError(
                        f"{self.path}: cached vectors have {width} dimensions, "
                        f"the encoder gives {fresh.shape[1]}"
                    )
            self._vectors.update(zip(missing, fresh, strict=True))
            self._save()
        if not texts:
            return np.zeros((0, 0), dtype=np.float32), 0
        return np.stack([self._vectors[d] for d in digests]), len(missing)
