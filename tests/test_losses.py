"""Tests of the next-item losses against hand computations on tiny fixed examples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsc4rec.models.srm import (
    LOSSES,
    SASRec,
    SequentialRecommender,
    bce_loss,
    compute_loss,
    full_softmax_loss,
    sample_negatives_per_position,
    sample_shared_negatives,
    sampled_softmax_loss,
)

NUM_ITEMS = 6
HIDDEN = 4


class TableEncoder(SequentialRecommender):
    """A stub whose hidden states are a free parameter table: logits are exactly ``table @ E^T``."""

    def __init__(self, table: Tensor) -> None:
        super().__init__(NUM_ITEMS, HIDDEN)
        self.table = nn.Parameter(table.clone())

    def encode(self, history: Tensor) -> Tensor:
        # Right-aligned, so the losses' trimming of leading padding columns keeps the alignment.
        return self.table[: history.size(0), -history.size(1) :]


# Row 0 starts with two padding positions; row 1 has a padding target in the middle.
INPUTS = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 1, 2]])
TARGETS = torch.tensor([[0, 0, 2, 3, 4], [5, 6, 0, 2, 3]])
MASK = TARGETS > 0


@pytest.fixture()
def stub() -> TableEncoder:
    torch.manual_seed(0)
    return TableEncoder(torch.randn(2, 5, HIDDEN))


def hand_logits(model: TableEncoder) -> Tensor:
    logits = model.table @ model.item_embedding.weight.t()
    logits[..., 0] = float("-inf")
    return logits


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


LOSS_CALLS = {
    "full_softmax": lambda model, x, y, **kw: full_softmax_loss(model, x, y, **kw),
    "sampled_softmax": lambda model, x, y, **kw: sampled_softmax_loss(model, x, y, 3, gen(), **kw),
    "bce": lambda model, x, y, **kw: bce_loss(model, x, y, gen(), 2, **kw),
}


def test_full_softmax_matches_cross_entropy_by_hand(stub: TableEncoder) -> None:
    expected = F.cross_entropy(hand_logits(stub)[MASK], TARGETS[MASK])
    # And written out: -log softmax at the target over items 1..N.
    logits = hand_logits(stub)[MASK][:, 1:]
    manual = (
        torch.logsumexp(logits, -1) - logits.gather(1, TARGETS[MASK].unsqueeze(1) - 1).squeeze(1)
    ).mean()
    got = full_softmax_loss(stub, INPUTS, TARGETS)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, manual)


@pytest.mark.parametrize("loss", list(LOSS_CALLS))
def test_padding_positions_contribute_nothing(stub: TableEncoder, loss: str) -> None:
    call = LOSS_CALLS[loss]
    before = call(stub, INPUTS, TARGETS)
    with torch.no_grad():
        stub.table[~MASK] = 100.0 * torch.randn(int((~MASK).sum()), HIDDEN)  # wild logits at padding targets
    after = call(stub, INPUTS, TARGETS)
    torch.testing.assert_close(after, before)
    after.backward()
    assert stub.table.grad[~MASK].abs().sum() == 0
    assert (stub.table.grad[MASK].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("loss", list(LOSS_CALLS))
def test_dense_and_selected_positions_agree(stub: TableEncoder, loss: str) -> None:
    call = LOSS_CALLS[loss]
    torch.testing.assert_close(
        call(stub, INPUTS, TARGETS, select_positions=False),
        call(stub, INPUTS, TARGETS, select_positions=True),
    )


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce"])
def test_real_model_padding_and_modes(loss: str) -> None:
    """On SASRec: extra leading padding changes nothing, nor does scoring every position."""
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, hidden_size=8, max_len=10).eval()
    inputs = torch.cat([torch.zeros(2, 3, dtype=torch.long), INPUTS], dim=1)
    targets = torch.cat([torch.zeros(2, 3, dtype=torch.long), TARGETS], dim=1)
    reference = compute_loss(loss, model, INPUTS, TARGETS, gen(), num_negatives=3)
    padded = compute_loss(loss, model, inputs, targets, gen(), num_negatives=3)
    fn = LOSSES[loss]
    kwargs = {"generator": gen(), "num_negatives": 3} if loss != "ce" else {}
    dense = fn(model, inputs, targets, select_positions=False, **kwargs)
    if loss != "bce":  # bce draws one negative per position, so a wider batch draws different negatives
        torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense, padded, atol=1e-5, rtol=1e-5)


def test_sampled_softmax_with_whole_catalogue_equals_full_softmax(stub: TableEncoder) -> None:
    full = full_softmax_loss(stub, INPUTS, TARGETS)
    for num_negatives in (NUM_ITEMS, NUM_ITEMS + 10):
        sampled = sampled_softmax_loss(stub, INPUTS, TARGETS, num_negatives, gen())
        torch.testing.assert_close(sampled, full)
    torch.manual_seed(1)
    model = SASRec(NUM_ITEMS, hidden_size=8, max_len=10).eval()
    torch.testing.assert_close(
        sampled_softmax_loss(model, INPUTS, TARGETS, NUM_ITEMS, gen()),
        full_softmax_loss(model, INPUTS, TARGETS),
    )


def test_sampled_softmax_masks_accidental_hits_by_hand(stub: TableEncoder) -> None:
    logits = hand_logits(stub)
    hits = 0
    for seed in range(5):
        negatives = sample_shared_negatives(NUM_ITEMS, 3, gen(seed))
        assert len(set(negatives.tolist())) == 3 and negatives.min() >= 1 and negatives.max() <= NUM_ITEMS
        terms = []
        for b, t in MASK.nonzero().tolist():
            target = int(TARGETS[b, t])
            others = [int(n) for n in negatives if int(n) != target]
            hits += len(others) < 3
            row = logits[b, t, [target, *others]]
            terms.append(torch.logsumexp(row, 0) - row[0])
        expected = torch.stack(terms).mean()
        torch.testing.assert_close(sampled_softmax_loss(stub, INPUTS, TARGETS, 3, gen(seed)), expected)
    assert hits > 0  # the seeds do exercise the accidental-hit masking


def test_sampled_softmax_is_below_full_softmax(stub: TableEncoder) -> None:
    """Fewer competitors can only lower the cross-entropy."""
    full = full_softmax_loss(stub, INPUTS, TARGETS)
    assert sampled_softmax_loss(stub, INPUTS, TARGETS, 2, gen()) <= full


def test_bce_matches_hand_computation(stub: TableEncoder) -> None:
    logits = hand_logits(stub)
    negatives = sample_negatives_per_position(TARGETS, NUM_ITEMS, 2, gen(3))
    terms = []
    for b, t in MASK.nonzero().tolist():
        positive = logits[b, t, TARGETS[b, t]]
        negative = logits[b, t, negatives[b, t]]
        terms.append(-torch.log(torch.sigmoid(positive)) - torch.log(1 - torch.sigmoid(negative)).sum())
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(bce_loss(stub, INPUTS, TARGETS, gen(3), num_negatives=2), expected)


def test_bce_with_one_negative_is_sasrec_loss(stub: TableEncoder) -> None:
    """The original SASRec objective: BCE(pos, 1) + BCE(neg, 0), averaged over positions."""
    logits = hand_logits(stub)
    negatives = sample_negatives_per_position(TARGETS, NUM_ITEMS, 1, gen(5))[..., 0]
    pos = logits.gather(-1, TARGETS.clamp(min=1).unsqueeze(-1)).squeeze(-1)[MASK]
    neg = logits.gather(-1, negatives.unsqueeze(-1)).squeeze(-1)[MASK]
    expected = F.binary_cross_entropy_with_logits(
        pos, torch.ones_like(pos)
    ) + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
    torch.testing.assert_close(bce_loss(stub, INPUTS, TARGETS, gen(5)), expected)


def test_per_position_negatives_avoid_the_target_uniformly() -> None:
    targets = torch.full((2000, 10), 3)
    negatives = sample_negatives_per_position(targets, 4, 2, gen())
    assert negatives.shape == (2000, 10, 2)
    counts = torch.bincount(negatives.flatten(), minlength=5)
    assert counts[0] == 0 and counts[3] == 0
    shares = counts[[1, 2, 4]].float() / negatives.numel()
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3), atol=0.01, rtol=0)
    varied = torch.randint(1, 8, (50, 7), generator=gen(1))
    assert (sample_negatives_per_position(varied, 7, 4, gen(2)) != varied.unsqueeze(-1)).all()
    with pytest.raises(ValueError):
        sample_negatives_per_position(targets, 1, 1, gen())


def test_losses_are_reproducible_given_the_generator(stub: TableEncoder) -> None:
    for call in (
        lambda g: sampled_softmax_loss(stub, INPUTS, TARGETS, 3, g),
        lambda g: bce_loss(stub, INPUTS, TARGETS, g, 2),
    ):
        assert torch.equal(call(gen(11)), call(gen(11)))
        values = {round(call(gen(seed)).item(), 6) for seed in range(6)}
        assert len(values) > 1  # the negatives really are random


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce"])
def test_batch_without_targets_gives_zero_loss(stub: TableEncoder, loss: str) -> None:
    empty = torch.zeros_like(TARGETS)
    for select in (True, False):
        fn = LOSSES[loss]
        kwargs = {"generator": gen(), "num_negatives": 2} if loss != "ce" else {}
        value = fn(stub, torch.zeros_like(INPUTS), empty, select_positions=select, **kwargs)
        assert value.item() == 0.0
        value.backward()


def test_compute_loss_dispatch(stub: TableEncoder) -> None:
    assert {"ce", "full_softmax", "sampled_softmax", "bce"} <= set(LOSSES)
    # A training loop passes generator and num_negatives to every loss; the full softmax ignores them.
    torch.testing.assert_close(
        compute_loss("ce", stub, INPUTS, TARGETS, gen(), num_negatives=7),
        full_softmax_loss(stub, INPUTS, TARGETS),
    )
    torch.testing.assert_close(
        compute_loss("sampled_softmax", stub, INPUTS, TARGETS, gen(4), num_negatives=3),
        sampled_softmax_loss(stub, INPUTS, TARGETS, 3, gen(4)),
    )
    torch.testing.assert_close(
        compute_loss("bce", stub, INPUTS, TARGETS, gen(4)), bce_loss(stub, INPUTS, TARGETS, gen(4))
    )
    with pytest.raises(ValueError, match=r"'bce', 'ce', 'full_softmax', 'sampled_softmax'"):
        compute_loss("hinge", stub, INPUTS, TARGETS, gen())
    with pytest.raises(TypeError, match="temperature"):
        compute_loss("bce", stub, INPUTS, TARGETS, gen(), temperature=0.5)
    with pytest.raises(ValueError, match="Generator"):
        compute_loss("sampled_softmax", stub, INPUTS, TARGETS, None, num_negatives=3)
