"""The content term of fusion: candidates' text similarity to the device's own freshest items."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from lsc4rec.client.collab.content import content_scores, recent_items, unit_vectors
from lsc4rec.client.collab.fusion import fuse_scores
from lsc4rec.client.collab.serving import CollaborationSettings, serve_devices
from lsc4rec.config import compose_config
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.models.srm import build_srm
from lsc4rec.settings import REQUEST_CURVE_IGNORES, RequestCurveSettings, SettingsError, typed_run
from lsc4rec.simulations.request_curve import FusionWeights, MomentLists, choose_fusion


def _unit() -> torch.Tensor:
    # Items 1..6 in 3 topics: (1, 2) lipstick, (3, 4) shampoo, (5, 6) perfume; item 6 has no text.
    vectors = torch.zeros(7, 3)
    vectors[1] = torch.tensor([1.0, 0.1, 0.0])
    vectors[2] = torch.tensor([0.9, 0.0, 0.1])
    vectors[3] = torch.tensor([0.0, 1.0, 0.1])
    vectors[4] = torch.tensor([0.1, 0.9, 0.0])
    vectors[5] = torch.tensor([0.0, 0.1, 1.0])
    return unit_vectors(vectors)


def test_recent_items_are_the_fresh_tail_newest_first() -> None:
    recent = recent_items([[1, 2, 3], [4], []], 2)
    assert recent.tolist() == [[3, 2], [4, 0], [0, 0]]
    with pytest.raises(ValueError, match="content_items must be >= 1"):
        recent_items([[1]], 0)


def test_content_scores_are_cosines_to_the_recent_items() -> None:
    unit = _unit()
    items = torch.tensor([[2, 4, 6, 0], [2, 4, 6, 0]])
    recent = torch.tensor([[1, 0], [3, 1]])
    scores = content_scores(items, recent, unit)
    assert scores[0, 0] == pytest.approx(float(unit[2] @ unit[1]))
    assert scores[0, 2] == 0.0 and scores[0, 3] == 0.0  # no text, empty slot
    # Two recent items, equal weights: the mean of both cosines.
    assert scores[1, 1] == pytest.approx(float(unit[4] @ (unit[3] + unit[1]) / 2))
    decayed = content_scores(items, recent, unit, decay=0.5)
    assert decayed[1, 1] == pytest.approx(float(unit[4] @ (unit[3] + 0.5 * unit[1]) / 1.5))
    # A device with no item yet gets no content signal at all.
    assert content_scores(items[:1], torch.zeros(1, 2, dtype=torch.long), unit).abs().sum() == 0
    with pytest.raises(ValueError, match="content_decay"):
        content_scores(items, recent, unit, decay=0.0)


def test_fused_score_adds_the_weighted_content_term() -> None:
    items = torch.tensor([[2, 4]])
    llm = torch.tensor([[0.0, 1.0]])  # the cloud prefers 4
    srm = torch.tensor([[0.0, 1.0]])  # so does the device model
    content = torch.tensor([[0.9, 0.1]])  # the fresh item reads like 2
    assert fuse_scores(llm, srm, items, 0.5).argmax() == 1
    assert fuse_scores(llm, srm, items, 0.5, content=content, content_weight=0.5).argmax() == 1
    assert fuse_scores(llm, srm, items, 0.5, content=content, content_weight=2.0).argmax() == 0
    with pytest.raises(ValueError, match="content_weight must be >= 0"):
        fuse_scores(llm, srm, items, 0.5, content=content, content_weight=-1.0)


def _moment(targets: list[int], fresh_last: list[int]) -> MomentLists:
    """Each device's list [2, 4]: the cloud and the SRM prefer 4; the devices' freshest items differ."""
    items = torch.tensor([[2, 4]] * len(targets))
    scores = torch.tensor([[0.0, 1.0]] * len(targets))
    return MomentLists(
        targets=torch.tensor(targets),
        stale_items=items,
        stale_llm=scores,
        stale_srm=scores,
        fresh_items=items,
        fresh_llm=scores,
        fresh_srm=scores,
        inconsistency=torch.zeros(len(targets)),
        pool="llm",
        recent=torch.tensor(fresh_last).unsqueeze(1),
        unit_text=_unit(),
    )


def _settings(*overrides: str) -> RequestCurveSettings:
    return typed_run(compose_config(list(overrides)), RequestCurveSettings, REQUEST_CURVE_IGNORES)


def test_content_weight_is_chosen_on_validation_only_where_it_helps() -> None:
    run = _settings("collab.content_weight=auto", "collab.alpha_grid=[0.5]", "collab.content_grid=[0.0,2.0]")
    # The devices' targets read like their freshest item (1 -> 2): the content term ranks them first.
    helps = _moment([2, 2], [1, 1])
    weights, _, by_content = choose_fusion(helps, run)
    assert weights == FusionWeights(0.5, 2.0)
    assert by_content[2.0] > by_content[0.0]
    never = torch.zeros(2, dtype=torch.bool)
    assert helps.ranks(never, weights, run).tolist() == [0, 0]
    assert helps.ranks(never, FusionWeights(0.5), run).tolist() == [1, 1]
    # Targets unrelated to the freshest item: no content weight.
    hurts = _moment([4, 4], [1, 1])
    assert choose_fusion(hurts, run)[0] == FusionWeights(0.5, 0.0)
    # Without text vectors the content term is left out, not guessed.
    helps.unit_text = None
    assert choose_fusion(helps, run)[0].content == 0.0
    with pytest.raises(ValueError, match="needs item text vectors"):
        helps.ranks(never, FusionWeights(0.5, 1.0), run)


def test_content_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="content_weight must be a number >= 0 or auto"):
        _settings("collab.content_weight=sometimes")
    with pytest.raises(SettingsError, match="content_items must be >= 1"):
        _settings("collab.content_items=0")
    with pytest.raises(SettingsError, match="content_decay"):
        _settings("collab.content_decay=1.5")


class SilentCloud:
    """A cloud no device asks (request mode never)."""

    max_history = 50

    def recommend(self, histories: object, n: int) -> None:
        raise AssertionError("no device may request with request.mode=never")


def test_devices_fuse_the_content_of_their_own_freshest_item() -> None:
    # Catalogue of 20 items, text in two topics: items 1..10 share one direction, 11..20 the other, except
    # that each item 11..20 also leans towards "its" item 1..10 (item 10 + j reads like item j).
    vectors = torch.zeros(21, 12)
    for j in range(1, 11):
        vectors[j, j] = 1.0
        vectors[10 + j, j] = 0.8
        vectors[10 + j, 11] = 0.6
    torch.manual_seed(0)
    srm = build_srm("sasrec", 20, hidden_size=8, num_blocks=1, num_heads=1, dropout=0.0, max_len=5)
    # Every device holds the cloud's list 11..20, the cloud preferring 20 > 19 > ... > 11; device d's freshest
    # item is d and its target is 10 + d, the candidate that reads like its freshest item.
    histories = [[(d % 10) + 1, d] for d in range(1, 11)]
    targets = [10 + d for d in range(1, 11)]
    items = np.tile(np.arange(20, 10, -1, dtype=np.int64), (10, 1))
    scores = np.tile(-np.arange(10, dtype=np.float32), (10, 1))
    plain = CollaborationSettings(candidates=10, alpha=1.0, mode="never", candidate_pool="llm")
    with_content = replace(plain, content_weight=5.0, unit_text=unit_vectors(vectors))
    generator = torch.Generator().manual_seed(0)
    lists = CandidateList(items, scores)
    ks = (1, 5, 10)
    before = serve_devices(srm, histories, targets, lists, SilentCloud(), plain, 5, generator, ks)
    after = serve_devices(srm, histories, targets, lists, SilentCloud(), with_content, 5, generator, ks)
    assert after["collab-HR@5"] == pytest.approx(1.0) and after["collab-NDCG@10"] == pytest.approx(1.0)
    assert before["collab-NDCG@10"] < 0.5
    # Only the device's own freshest item counts: with another last item the content points elsewhere.
    shifted = [[h[0], (h[1] % 10) + 1] for h in histories]
    moved = serve_devices(srm, shifted, targets, lists, SilentCloud(), with_content, 5, generator, ks)
    assert moved["collab-HR@1"] == 0.0
    with pytest.raises(ValueError, match="needs the catalogue's text vectors on the device"):
        replace(plain, content_weight=1.0)
