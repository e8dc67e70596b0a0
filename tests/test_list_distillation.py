"""List distillation: the cloud's scores of the items it listed are the SRM's soft targets."""

from __future__ import annotations

import pytest
import torch

from lsc4rec.client.collab.rerank_training import train_on_llm_candidates
from lsc4rec.models.srm import SASRec, list_distillation_loss
from lsc4rec.training import TrainSettings

NUM_ITEMS = 12


def _model() -> SASRec:
    torch.manual_seed(0)
    return SASRec(NUM_ITEMS, hidden_size=16, num_blocks=1, dropout=0.0, max_len=4)


def test_the_loss_reads_only_the_listed_items_and_their_scores() -> None:
    model = _model().eval()
    inputs = torch.tensor([[0, 1, 2, 3]])
    targets = torch.tensor([[0, 2, 3, 4]])
    items = torch.tensor([[[0, 0, 0], [5, 6, 7], [5, 6, 0], [8, 9, 10]]])
    with torch.no_grad():
        student = model.position_scores(inputs, items.clamp(min=1))
    # The student's own scores as the teacher's: nothing to learn (a shift per list changes nothing).
    matched = list_distillation_loss(model, inputs, targets, items, student + 3.0)
    assert float(matched.detach()) == pytest.approx(0.0, abs=1e-6)
    # A confident teacher the near-uniform student does not follow costs something, and the empty slot
    # (item 0) is ignored whatever its score.
    reversed_scores = torch.tensor([0.0, -3.0, -6.0]).expand_as(student).clone()
    loss = list_distillation_loss(model, inputs, targets, items, reversed_scores)
    assert float(loss.detach()) > 0.3
    changed_empty = reversed_scores.clone()
    changed_empty[0, 2, 2] = 100.0
    changed = list_distillation_loss(model, inputs, targets, items, changed_empty)
    assert float(changed.detach()) == pytest.approx(float(loss.detach()))
    # Gradients reach only what scores the listed items: an item in no list and no history gets none.
    model.train()
    list_distillation_loss(model, inputs, targets, items, reversed_scores).backward()
    assert model.item_embedding.weight.grad[11].abs().sum() == 0
    assert model.item_embedding.weight.grad[5].abs().sum() > 0
    with pytest.raises(ValueError, match=r"must both be \[B, L, k\]"):
        list_distillation_loss(model, inputs, targets, items, reversed_scores[..., :2])
    with pytest.raises(ValueError, match="distill_temperature must be > 0"):
        list_distillation_loss(model, inputs, targets, items, reversed_scores, temperature=0.0)


class ListingCloud:
    """A stand-in cloud: after any item it lists items 5..9 and scores them 9 > 8 > 7 > 6 > 5 (best first)."""

    def __init__(self) -> None:
        self.calls = 0

    def position_candidate_scores(self, inputs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        items = torch.tensor([9, 8, 7, 6, 5])[:k].expand(*inputs.shape, k).clone()
        scores = torch.tensor([-0.1, -1.0, -2.0, -3.0, -4.0])[:k].expand_as(items).clone()
        padding = (inputs == 0).unsqueeze(-1)
        return items.masked_fill(padding, 0), scores.masked_fill(padding, float("-inf"))


@pytest.mark.slow
def test_collaborative_pass_learns_the_clouds_order_only_with_distillation() -> None:
    # Targets never fall among the listed items, so the rerank loss alone says nothing about their order.
    sequences = [[1, 2, 3, 4], [2, 3, 4, 1], [3, 4, 1, 2], [4, 1, 2, 3]] * 8
    settings = TrainSettings(batch_size=8, lr=0.01, grad_clip=5.0, progress=False)
    orders = {}
    for weight in (0.0, 5.0):
        model = _model()
        cloud = ListingCloud()
        train_on_llm_candidates(
            model,
            cloud,
            sequences,
            settings,
            4,
            epochs=3,
            hard_negatives=5,
            random_negatives=0,
            distill_weight=weight,
        )  # type: ignore[arg-type]  # the stand-in has the one method the pass calls
        assert cloud.calls > 0
        with torch.no_grad():
            history, listed = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[9, 8, 7, 6, 5]])
            scores = model.eval().score_candidates(history, listed)
        orders[weight] = scores[0].argsort(descending=True).tolist()
    assert orders[5.0] == [0, 1, 2, 3, 4]
    assert orders[0.0] != [0, 1, 2, 3, 4]
