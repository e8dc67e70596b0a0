"""A dataset without item text in a system that reads it: fall back to ids, or refuse before launching.

The whole system reads the catalogue's item text in three places (SOLID's codebook, the SRM's text part, the
content term of fusion), a federated run started from text in a fourth (its item table); most public
datasets have none. Before anything starts, each part that would read text is either switched to its id-only
form, when the preset chose it (a log line says which part and why), or refused, when the user asked for it
on the command line (the message names the override to drop). The cloud LLM needs nothing here:
``llm.item_init=auto`` already reads ids alone on such a dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lsc4rec.settings import FederatedRunSettings, SettingsError

__all__ = ["TEXT_PARTS", "TextPart", "text_fallback"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextPart:
    """One part of a run that reads item text, and its id-only form."""

    key: str
    reads_text: Callable[[FederatedRunSettings], bool]
    #: The override that switches the part to ids alone (given the run, for list-valued keys).
    fallback: Callable[[FederatedRunSettings], str]
    without_text: str


def _solid_features(run: FederatedRunSettings) -> str:
    kept = [f for f in run.solid.features if f != "text"] or ["embedding"]
    return f"solid.features=[{','.join(kept)}]"


TEXT_PARTS: tuple[TextPart, ...] = (
    TextPart(
        "solid.features",
        lambda run: run.model.name == "solid" and "text" in run.solid.features,
        _solid_features,
        "SOLID's codebook quantises the model's own item embeddings",
    ),
    TextPart(
        "model.item_text",
        lambda run: run.model.item_text != "none",
        lambda run: "model.item_text=none",
        "the device SRM's item vectors are learned id rows only",
    ),
    TextPart(
        "federated.text_started_items",
        lambda run: run.federated.text_started_items,
        lambda run: "federated.text_started_items=false",
        "the global model's item table starts from random rows",
    ),
    TextPart(
        "collab.content_weight",
        lambda run: run.collab.enabled and float(run.collab.content_weight) > 0,
        lambda run: "collab.content_weight=0",
        "devices fuse without the content term",
    ),
)


def text_fallback(
    run: FederatedRunSettings, overrides: Sequence[str], has_text: bool, dataset: str
) -> list[str]:
    """The overrides that make ``run`` read ids alone when ``has_text`` is False (none when it is True).

    Raises :class:`SettingsError` when a part that needs text was asked for in ``overrides``.
    """
    if has_text:
        return []
    extra = []
    for part in TEXT_PARTS:
        if not part.reads_text(run):
            continue
        asked = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == part.key]
        if asked:
            raise SettingsError(
                f"dataset {dataset!r} has no item text, but {asked[-1]} needs it: drop that override (the "
                f"run then uses {part.fallback(run)}), or give the data an X_item_text.jsonl / data.text_path"
            )
        extra.append(part.fallback(run))
        logger.warning("dataset %r has no item text: %s (%s)", dataset, part.without_text, part.fallback(run))
    return extra
