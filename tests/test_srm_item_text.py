"""The text part of a device SRM's item vectors (model.item_text=projected)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lsc4rec.data.item_text import ItemText
from lsc4rec.models.srm import SRM_CLASSES, SASRecConfig
from lsc4rec.settings import model_config
from lsc4rec.text import item_text_vectors
from lsc4rec.text.text_settings import TextSettings
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
    model = build_model_from_config(
        model_config(cfg), NUM_ITEMS, 8, _vectors() if vectors is None else vectors
    )
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


@pytest.mark.parametrize("name", [*SRM_CLASSES, "solid"])
def test_items_no_training_sequence_holds_score_by_text_alone(name: str) -> None:
    from lsc4rec.models.srm.losses import compute_loss

    extra = {"codebook_sizes": [4]} if name == "solid" else {}
    torch.manual_seed(0)
    cfg = {"name": name, "hidden_size": 16, "item_text": "projected", **extra}
    training = [[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [2, 4, 6]]
    model = build_model_from_config(model_config(cfg), NUM_ITEMS, 8, _vectors(), training)
    if name == "solid":
        model.set_semantic_ids(torch.zeros(NUM_ITEMS + 1, 1, dtype=torch.long))
    model.train()
    inputs = torch.tensor([[1, 2, 3, 4, 5], [6, 5, 4, 3, 2]])
    targets = torch.tensor([[2, 3, 4, 5, 6], [5, 4, 3, 2, 1]])
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(5):
        loss = compute_loss("ce", model, inputs, targets, torch.Generator().manual_seed(0))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    table = model.item_table().detach()
    # Item 20 is in no training sequence: never a negative, its id row stays zero and it scores by its text.
    assert torch.count_nonzero(model.item_embedding.weight[7:].detach()) == 0
    expected = model.item_text.projection(model.item_text.vectors[20]).detach()
    assert torch.allclose(table[20], expected, atol=1e-6)
    assert table[20].norm() > 0
    # Trained items moved their id rows; inputs see the same vectors as the scores.
    assert torch.count_nonzero(model.item_embedding.weight[2].detach()) > 0
    ids = torch.tensor([2, 20])
    assert torch.allclose(model.embed_items(ids).detach(), table[ids], atol=1e-6)
    # An objective that names an untrained item (distillation towards a teacher who knows it) still moves it.
    logits = model.position_item_logits(inputs, targets > 0)
    teacher = torch.zeros_like(logits)
    teacher[:, 19] = 5.0  # column 19 = item 20
    kd = torch.nn.functional.kl_div(
        torch.log_softmax(logits, -1), torch.log_softmax(teacher, -1), log_target=True, reduction="batchmean"
    )
    optimiser.zero_grad()
    kd.backward()
    optimiser.step()
    assert torch.count_nonzero(model.item_embedding.weight[20].detach()) > 0


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce"])
@pytest.mark.parametrize("select_positions", [True, False])
def test_training_losses_never_use_unseen_items_as_negatives(loss: str, select_positions: bool) -> None:
    from lsc4rec.models.srm.losses import _dense_position_losses, compute_loss, draw_negatives

    training = [[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]]
    torch.manual_seed(0)
    cfg = {"name": "sasrec", "hidden_size": 16, "item_text": "projected"}
    model = build_model_from_config(model_config(cfg), NUM_ITEMS, 8, _vectors(), training).eval()
    inputs = torch.tensor([[0, 1, 2, 3, 4], [0, 6, 5, 4, 3]])
    targets = torch.tensor([[0, 2, 3, 4, 5], [0, 5, 4, 3, 2]])

    def value() -> torch.Tensor:
        if not select_positions:
            negatives = draw_negatives(loss, NUM_ITEMS, targets, 40, torch.Generator().manual_seed(3))
            return _dense_position_losses(loss, model, inputs, targets, negatives).sum()
        generator = torch.Generator().manual_seed(3)
        return compute_loss(loss, model, inputs, targets, generator, num_negatives=40)

    before = value()
    with torch.no_grad():
        model.item_text.vectors[20] *= 50.0  # an unseen item's text: no loss may read it
    assert torch.allclose(value(), before)
    with torch.no_grad():
        model.item_text.vectors[6] *= 50.0  # a trained item's text: the loss reads it
    assert not torch.allclose(value(), before)


def test_many_ids_gather_from_the_projected_table_with_the_same_values_and_gradients() -> None:
    from lsc4rec.models.srm.text_part import ItemTextRows

    rows = ItemTextRows(_vectors(), 16)
    ids = torch.randint(0, NUM_ITEMS + 1, (4, 5, 6), generator=torch.Generator().manual_seed(0))
    assert ids.numel() >= rows.num_rows  # the gather path
    gathered = rows(ids)
    (gathered**2).sum().backward()
    fast_grad = rows.projection.weight.grad.clone()
    rows.projection.weight.grad = None
    direct = rows.projection(rows.vectors[ids])
    (direct**2).sum().backward()
    assert torch.allclose(gathered, direct, atol=1e-6)
    assert torch.allclose(fast_grad, rows.projection.weight.grad, atol=1e-5)


def test_set_trained_items_checks_its_input() -> None:
    plain = build_model_from_config(model_config({"name": "sasrec", "hidden_size": 16}), NUM_ITEMS, 8)
    with pytest.raises(ValueError, match="needs the text part"):
        plain.set_trained_items(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"item ids must be in \[1, 30\]"):
        _model("sasrec").set_trained_items(torch.tensor([0, 31]))


def test_vectors_are_not_in_the_state_and_a_loaded_model_scores_the_same() -> None:
    model = _model("sasrec")
    state = model.state_dict()
    assert "item_text.projection.weight" in state
    assert not any("vectors" in key for key in state)
    clone = build_model_from_config(
        model_config({"name": "sasrec", "hidden_size": 16, "item_text": "projected"}),
        NUM_ITEMS,
        8,
        _vectors(),
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
        build_model_from_config(model_config(cfg), NUM_ITEMS, 8)
    with pytest.raises(ValueError, match=r"model\.item_text='frozen' is not one of"):
        build_model_from_config(model_config({**cfg, "item_text": "frozen"}), NUM_ITEMS, 8, _vectors())
    with pytest.raises(ValueError, match=r"expected \[31, D\]"):
        build_model_from_config(model_config(cfg), NUM_ITEMS, 8, _vectors()[:-1])
    split = SimpleNamespace(item_text={}, num_items=NUM_ITEMS)  # model_item_vectors reads only these
    with pytest.raises(ValueError, match="dataset 'shop' has none"):
        model_item_vectors(model_config(cfg), split, TextSettings(), "shop")
    assert model_item_vectors(SASRecConfig(), split, TextSettings(), "shop") is None
    # A run reads vectors for the text part or for the content term; neither: none.
    assert run_item_vectors(SASRecConfig(), split, TextSettings(), "shop", 0.0) is None
    for weight in (0.2, "auto"):
        with pytest.raises(ValueError, match=r"collab\.content_weight=.* dataset 'shop' has none"):
            run_item_vectors(SASRecConfig(), split, TextSettings(), "shop", weight)


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
        model_config({"name": "sasrec", "hidden_size": 8, "item_text": "projected"}), 3, 4, vectors.vectors
    )
    assert int(model.item_text.vectors[2].abs().sum()) == 0


@pytest.mark.parametrize("name", ["text_part", "solid_codes"])
def test_gradients_of_repeated_ids_are_the_same_every_pass_on_several_threads(name: str) -> None:
    # Indexing a table (table[ids]) accumulates the gradient of repeated ids in an order that varies between
    # passes when torch runs several CPU threads; the models look rows up with an embedding call instead.
    from lsc4rec.models.srm.text_part import ItemTextRows

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generator = torch.Generator().manual_seed(0)
        if name == "text_part":
            module = ItemTextRows(torch.randn(12_102, 24, generator=generator), 64)
            ids = torch.randint(0, 12_102, (128, 50), generator=generator)

            def rows() -> torch.Tensor:
                return module(ids)

            weight = module.projection.weight
        else:
            torch.manual_seed(0)
            config = model_config({"name": "solid", "hidden_size": 64, "semantic_scores": True})
            model = build_model_from_config(config, 12_101, 8)
            model.set_semantic_ids(torch.randint(0, 4, (12_102, 1), generator=generator))
            model.train()

            def rows() -> torch.Tensor:
                return model.item_table()

            weight = model.semantic_trunk.item_embedding.weight
        upstream = None
        grads = []
        for _ in range(10):
            weight.grad = None
            out = rows()
            if upstream is None:
                upstream = torch.randn(out.shape, generator=generator)
            (out * upstream).sum().backward()
            grads.append(weight.grad.clone())
        assert all(torch.equal(grads[0], grad) for grad in grads[1:])
    finally:
        torch.set_num_threads(threads)
