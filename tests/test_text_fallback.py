"""A dataset without item text in the whole system: its text parts fall back to ids, or the run is refused."""

from __future__ import annotations

import logging

import pytest

from lsc4rec.settings import SettingsError, federated_settings_from_overrides
from lsc4rec.simulations.launch.text_fallback import text_fallback

TEXT_RUN = ["model.item_text=projected", "collab.content_weight=0.2"]


def test_preset_parts_fall_back_to_ids_with_a_line_each(caplog: pytest.LogCaptureFixture) -> None:
    run = federated_settings_from_overrides(TEXT_RUN)
    assert text_fallback(run, [], has_text=True, dataset="shop") == []
    with caplog.at_level(logging.WARNING):
        extra = text_fallback(run, [], has_text=False, dataset="lastfm")
    assert extra == ["solid.features=[embedding]", "model.item_text=none", "collab.content_weight=0"]
    assert sum("dataset 'lastfm' has no item text" in r.getMessage() for r in caplog.records) == 3
    # The fallback overrides compose into a run that reads no text at all.
    fallen = federated_settings_from_overrides([*TEXT_RUN, *extra])
    assert text_fallback(fallen, [], has_text=False, dataset="lastfm") == []


def test_a_text_part_the_user_asked_for_is_refused_with_the_override_to_drop() -> None:
    run = federated_settings_from_overrides(TEXT_RUN)
    with pytest.raises(SettingsError, match=r"model\.item_text=projected needs it: drop that override"):
        text_fallback(run, ["model.item_text=projected"], has_text=False, dataset="lastfm")
    # A plain federated SASRec reads no text: nothing to do.
    plain = federated_settings_from_overrides(["system=sasrec"])
    assert text_fallback(plain, [], has_text=False, dataset="lastfm") == []
