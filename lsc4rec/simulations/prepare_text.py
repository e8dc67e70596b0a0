"""Encode the item text a run reads into the text-vector cache, once per machine (``make install`` runs it).

Without it a machine's first run encodes every item's text before it trains (Beauty's 12,101 items: about a
minute on 2 CPU cores); every later run reads the cache (:mod:`lsc4rec.text.cache`). The command takes a
federated run's overrides and encodes exactly what that run would read, e.g.::

    python -m lsc4rec.simulations.prepare_text                                   # make run's (Beauty)
    python -m lsc4rec.simulations.prepare_text data.name=X data.path=/abs/X.txt  # another dataset's

A dataset without item text, or a run that reads none, has nothing to prepare (said, exit 0). Ends with
``RESULT {json}``, also written to ``<output_dir>/text-prepare/text_prepare.json``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lsc4rec.data import leave_one_out, load_dataset
from lsc4rec.reporting import emit_result, write_json
from lsc4rec.server.components.catalogue_text import catalogue_vectors
from lsc4rec.settings import federated_settings_from_overrides
from lsc4rec.text.cache import default_cache_dir

__all__ = ["main", "prepare_text_vectors"]

logger = logging.getLogger(__name__)


def prepare_text_vectors(overrides: Sequence[str]) -> dict:
    """Encode (or find cached) the item text vectors of the federated run ``overrides`` configure; return
    what was done: the dataset, how many items carry a vector, the cache folder and the seconds."""
    run = federated_settings_from_overrides(list(overrides))
    raw = load_dataset(
        run.data.name, run.data.path, run.data.format, run.data.text_path, kcore=run.data.kcore
    )
    summary = {"experiment": "text-prepare", "dataset": run.data.name, "encoder": run.text.encoder}
    if not raw.item_text:
        return {**summary, "items_with_vectors": 0, "note": "the dataset has no item text: nothing to encode"}
    started = time.perf_counter()
    vectors = catalogue_vectors(run, leave_one_out(raw))
    if vectors is None:
        return {**summary, "items_with_vectors": 0, "note": "this run reads no item text: nothing to encode"}
    return {
        **summary,
        "items_with_vectors": int((vectors.vectors[1:].abs().sum(dim=1) > 0).sum()),
        "cache_dir": str(run.text.cache_dir or default_cache_dir()),
        "seconds": round(time.perf_counter() - started, 1),
        "output_dir": str(Path(run.output_dir) / "text-prepare"),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: ``python -m lsc4rec.simulations.prepare_text [overrides]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare_text_vectors(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError) as error:
        if os.environ.get("LSC4REC_TRACEBACK"):
            raise
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)
    if "output_dir" in summary:
        write_json(Path(summary["output_dir"]) / "text_prepare.json", summary)
    emit_result(summary)


if __name__ == "__main__":
    main()
