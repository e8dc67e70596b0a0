"""The text part of a device SRM's item vectors (model.item_text=projected)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lsc4rec.data.item_text import ItemText
from lsc4rec.models.srm import SRM_CLASSES
from lsc4rec.text import item_text_vectors
from lsc4rec.training import build_model_from_config, model_item_vectors, run_item_vectors

NUM_ITEMS = 30
D_TEXT = 12


def _vectors(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(NUM_ITEMS + 1, D_TEXT, generator=generator)
    vectors[0] = 0.0
    vectors[5] = 0.0  # an item without text
    return vectors


def _model(name: str, vectors: torch.Tensor | None = None, **extra: object):
    torch.manual_seed(0)
    cfg = {"name": name, "hidden_size": 16, "item_text": "projected", **extra}
    model = build_model_from_config(cfg, NUM_ITEMS, 8, _vectors() if vectors is None else vectors)
    if name == "solid":
        generator = torch.Generator().manual_seed(1)
        model.set_semantic_ids(torch.randint(0, 4, (NUM_ITEMS + 1, 1), generator=generator))
    return model.eval()


@pytest.mark.parametrize("name", [*SRM_CLASSES, "solid"])
def test_scores_use_the_text_part(name: str) -> None:
    extra = {"codebook_sizes": [4]} if name == "solid" else {}
    model = _model(name, **extra)
    history = torch.tensor([[0, 0, 3, 7, 9], [1, 2, 4, 6, 8]])
    before = model.score_all(history)
    # Items with text start as their text: their id rows are zero.
    assert torch.count_nonzero(model.item_embedding.weight[1:5]) == 0
    assert torch.count_nonzero(model.item_embedding.weight[5]) > 0  # no text: keeps its random id row
    with torch.no_grad():
        model.item_text.vectors[11] += 1.0  # only item 11's text changes
    after = model.score_all(history)
    changed = (before - after).abs().amax(dim=0) > 1e-7
    assert bool(changed[11])
    if name in ("sasrec", "gru4rec", "ttt4rec", "din"):
        # A model whose item 11 is not in the history: only item 11's column moves.
        assert changed.nonzero().flatten().tolist() == [11]
    candidates = torch.tensor([[11, 12], [11, 13]])
    assert torch.allclose(model.score_candidates(history, candidates), after.gather(1, candidates), atol=1e-5)


def test_untrained_items_get_text_scores_and_move_with_the_projection() -> None:
    model = _model("sasrec").train()
    vectors = model.item_text.vectors
    # Item 20 never appears in training; its score still comes from P · text(20).
    history = torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]])
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    untrained_before = model.item_table()[20].detach().clone()
    assert untrained_before.norm() > 0
    for _ in range(5):
        logits = model.position_item_logits(history, history != 0)
        targets = torch.tensor([2, 3, 4, 6, 3, 2, 1, 6]) - 1
        loss = torch.nn.functional.cross_entropy(logits, targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert model.item_embedding.weight.grad is not None
    # Its vector is still its id row plus P · text(20), and P moved with the items that were trained.
    text_part = model.item_table()[20] - model.item_embedding.weight[20]
    assert torch.allclose(text_part, model.item_text.projection(vectors[20]))
    assert not torch.allclose(model.item_table()[20].detach(), untrained_before)


def test_vectors_are_not_in_the_state_and_a_loaded_model_scores_the_same() -> None:
    model = _model("sasrec")
    state = model.state_dict()
    assert "item_text.projection.weight" in state
    assert not any("vectors" in key for key in state)
    clone = build_model_from_config(
        {"name": "sasrec", "hidden_size": 16, "item_text": "projected"}, NUM_ITEMS, 8, _vectors()
    ).eval()
    clone.load_state_dict(state)
    history = torch.tensor([[0, 1, 2, 3]])
    assert torch.equal(clone.score_all(history), model.score_all(history))


def test_cached_table_follows_weight_changes() -> None:
    model = _model("sasrec")
    with torch.no_grad():
        first = model.item_table().clone()
        model.item_text.projection.weight.mul_(2.0)
        second = model.item_table()
    assert not torch.allclose(first, second)


def test_configuration_errors_name_the_key() -> None:
    cfg = {"name": "sasrec", "hidden_size": 16, "item_text": "projected"}
    with pytest.raises(ValueError, match=r"model\.item_text=projected needs the items' text vectors"):
        build_model_from_config(cfg, NUM_ITEMS, 8)
    with pytest.raises(ValueError, match=r"model\.item_text='frozen' is not one of"):
        build_model_from_config({**cfg, "item_text": "frozen"}, NUM_ITEMS, 8, _vectors())
    with pytest.raises(ValueError, match=r"expected \[31, D\]"):
        build_model_from_config(cfg, NUM_ITEMS, 8, _vectors()[:-1])
    split = SimpleNamespace(item_text={}, num_items=NUM_ITEMS)  # model_item_vectors reads only these
    with pytest.raises(ValueError, match="dataset 'shop' has none"):
        model_item_vectors(cfg, split, {}, "shop")
    assert model_item_vectors({"name": "sasrec"}, split, {}, "shop") is None
    # A run reads vectors for the text part or for the content term; neither: none.
    assert run_item_vectors({"name": "sasrec"}, split, {}, "shop", 0.0) is None
    for weight in (0.2, "auto"):
        with pytest.raises(ValueError, match=r"collab\.content_weight=.* dataset 'shop' has none"):
            run_item_vectors({"name": "sasrec"}, split, {}, "shop", weight)


def test_solid_shares_one_text_part_with_its_item_trunk() -> None:
    model = _model("solid", codebook_sizes=[4])
    assert model.item_trunk.item_text is model.item_text
    keys = [key for key in model.state_dict() if "projection" in key and "item_text" in key]
    assert keys == ["item_text.projection.weight"]


def test_item_text_vectors_for_a_split_with_text(tmp_path) -> None:
    split = SimpleNamespace(
        num_items=3, item_text={1: ItemText(title="red lipstick"), 3: ItemText(title="blue mascara")}
    )

    class FakeEncoder:
        key = "fake"

        def encode(self, texts, batch_size=64, progress=False):
            return np.stack([np.full(4, float(len(t))) for t in texts]).astype("float32")

    vectors = item_text_vectors(split.item_text, 3, encoder=FakeEncoder(), cache_dir=tmp_path, progress=False)
    model = build_model_from_config(
        {"name": "sasrec", "hidden_size": 8, "item_text": "projected"}, 3, 4, vectors.vectors
    )
    assert int(model.item_text.vectors[2].abs().sum()) == 0
