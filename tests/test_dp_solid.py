"""Local DP-SGD of SOLID (the whole system's device model): per-example gradients, exact clipping."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from test_dp_text_part import TEXT_DIM, _example_grads_by_autograd
from test_privacy import NUM_ITEMS, assert_row_gather_equals_dense, padded, sequences, settings

from lsc4rec.client.private_training import (
    CloudListPass,
    _per_sample_grads,
    _RerankRowLoss,
    _RowLoss,
    check_per_row_terms,
    epsilon_of,
    per_example_mode,
    train_on_shard_private,
)
from lsc4rec.models.solid import SolidRecommender
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.models.srm.losses import candidate_rerank_loss, draw_negatives, per_sequence_rerank_loss
from lsc4rec.privacy import PrivacySettings


def solid_model(base: str = "ttt4rec", text: bool = True, seed: int = 5) -> SolidRecommender:
    """A small SOLID model with semantic ids (two levels) and, optionally, the text part."""
    from opacus.validators import ModuleValidator

    torch.manual_seed(seed)
    model = SolidRecommender(NUM_ITEMS, base=base, hidden_size=8, dropout=0.0, codebook_sizes=[4, 3],
                             semantic_scores=True, max_len=10)  # fmt: skip
    if text:
        model.attach_item_text(torch.randn(NUM_ITEMS + 1, TEXT_DIM))
    with torch.no_grad():
        model.item_embedding.weight[1:] = 0.1 * torch.randn(NUM_ITEMS, 8)
    codes = torch.stack([torch.arange(NUM_ITEMS + 1) % 4, torch.arange(NUM_ITEMS + 1) % 3], dim=1)
    model.set_semantic_ids(codes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModuleValidator.fix(model)


def test_generating_everywhere_gives_the_same_user_vectors() -> None:
    """The static-shape path (for torch.func) equals the selecting one at real positions, zeros at padding."""
    model = solid_model().eval()
    inputs, _ = padded(sequences(6, seed=3, low=2, high=14))
    with torch.no_grad():
        selected = model.encode(inputs)
        per_example_mode(model, True)
        everywhere = model.encode(inputs)
        per_example_mode(model, False)
    torch.testing.assert_close(everywhere, selected, atol=1e-6, rtol=1e-5)
    assert bool((everywhere[inputs == 0] == 0).all())


def test_per_row_vq_term_is_each_rows_own_and_matches_the_batch_term() -> None:
    """One row's VQ term does not depend on the other rows; for equal-length rows its mean is the batch's."""
    model = solid_model()
    inputs = torch.randint(1, NUM_ITEMS + 1, (5, 10))
    rows = model.per_row_auxiliary_loss(inputs)
    assert rows.shape == (5,)
    torch.testing.assert_close(rows.mean(), model.auxiliary_loss(inputs))
    changed = inputs.clone()
    changed[0] = torch.randint(1, NUM_ITEMS + 1, (10,))
    torch.testing.assert_close(model.per_row_auxiliary_loss(changed)[1:], rows[1:])


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
@pytest.mark.parametrize(("base", "text"), [("ttt4rec", True), ("sasrec", False)])
def test_row_gather_on_solid_equals_per_example_autograd(base: str, text: bool, loss: str) -> None:
    """SOLID's per-example gradients (both trunks, the generators, the semantic table, the id rows and, with
    the text part, P): the whole-model engine equals each example's own backward in float64, and the
    row-gather engine (semantic tokens renumbered per example) equals the whole-model engine."""
    model = solid_model(base, text)
    inputs, targets = padded(sequences(6, seed=11, low=2, high=14))
    negatives = draw_negatives(
        loss, NUM_ITEMS, targets, 12 if loss == "sampled_softmax" else 3, torch.Generator().manual_seed(1)
    )
    wrapper = _RowLoss(model, loss)
    names = [n for n, p in wrapper.named_parameters() if p.requires_grad]
    assert "model.semantic_trunk.item_embedding.weight" in names
    exact = copy.deepcopy(wrapper).double()
    exact_values = {n: p.detach() for n, p in exact.named_parameters() if n in names}
    by_autograd = _example_grads_by_autograd(exact, names, inputs, targets, negatives)
    per_example_mode(exact.model, True)
    by_func = _per_sample_grads(exact, exact_values, inputs, targets, negatives)
    for n in names:
        torch.testing.assert_close(by_func[n], by_autograd[n], atol=1e-11, rtol=1e-8, msg=n)
    # The semantic table and the generators carry real gradient, not zeros carried along.
    for n in ("model.semantic_trunk.item_embedding.weight", "model.item_generators.0.weight.weight"):
        assert float(by_autograd[n].abs().sum()) > 0, n
    per_example_mode(model, True)
    assert_row_gather_equals_dense(wrapper, names, inputs, targets, negatives)


def test_solid_trains_under_local_dp_with_the_rows_engine() -> None:
    """A DP-SGD round on SOLID: ε spent, every trained part moves, the model leaves in its selecting mode."""
    model = solid_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    privacy = PrivacySettings(mode="local", noise_multiplier=1.0, grad_sample_mode="auto")
    result = train_on_shard_private(
        model, sequences(32, seed=9), settings("bce"), privacy, 10, 1, 1, 32, seed=2
    )
    assert result.trained and result.metrics["epsilon"] > 0
    assert result.metrics["grad-sample-mode"] == 2.0  # rows
    assert not model.generate_everywhere
    for key in ("item_embedding.weight", "semantic_trunk.item_embedding.weight", "item_meta.0.weight"):
        assert not torch.equal(model.state_dict()[key], before[key]), key


def test_a_model_whose_auxiliary_term_dp_would_drop_is_refused() -> None:
    class WithTerm(SequentialRecommender):
        def encode(self, history: torch.Tensor) -> torch.Tensor:
            return self.item_embedding(history)

        def auxiliary_loss(self, inputs: torch.Tensor) -> torch.Tensor | None:
            return inputs.float().mean()

    with pytest.raises(ValueError, match="per_row_auxiliary_loss"):
        check_per_row_terms(WithTerm(NUM_ITEMS, 8))
    check_per_row_terms(solid_model())


# ---------------------------------------------------------------------- the pass over the cloud's lists


def _lists(rows: int, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (inputs, targets) and a cloud list of 5 per position (some hits, some padding slots)."""
    inputs, targets = padded(sequences(rows, seed=seed, low=2, high=14))
    g = torch.Generator().manual_seed(seed)
    hard = torch.randint(1, NUM_ITEMS + 1, (*targets.shape, 5), generator=g)
    hard[..., 0] = torch.where(torch.rand(targets.shape, generator=g) < 0.3, targets, hard[..., 0])  # hits
    hard[..., -1] = 0  # a short list
    hard[targets == 0] = 0
    return inputs, targets, hard


def test_per_row_rerank_loss_is_the_batch_loss_row_by_row() -> None:
    """Weighted by their positions, the rows' losses give the batch's candidate-rerank loss exactly."""
    model = solid_model().eval()
    inputs, targets, hard = _lists(6)
    batch = candidate_rerank_loss(model, inputs, targets, hard, torch.Generator(), num_negatives=0)
    rows = per_sequence_rerank_loss(model, inputs, targets, hard)
    positions = (targets > 0).sum(dim=1).to(rows.dtype)
    torch.testing.assert_close((rows * positions).sum() / positions.sum(), batch)
    changed = inputs.clone()
    changed[0, -1] = changed[0, -1] % NUM_ITEMS + 1
    torch.testing.assert_close(per_sequence_rerank_loss(model, changed, targets, hard)[1:], rows[1:])


@pytest.mark.parametrize("text", [True, False])
def test_row_gather_on_the_rerank_loss_equals_the_whole_model_engine(text: bool) -> None:
    model = solid_model(text=text)
    inputs, targets, hard = _lists(6)
    uniform = torch.randint(1, NUM_ITEMS + 1, (7,), generator=torch.Generator().manual_seed(2))
    negatives = torch.cat([hard, uniform.expand(*hard.shape[:2], -1)], dim=-1)
    wrapper = _RerankRowLoss(model)
    names = [n for n, p in wrapper.named_parameters() if p.requires_grad]
    per_example_mode(model, True)
    assert_row_gather_equals_dense(wrapper, names, inputs, targets, negatives)


def test_the_pass_over_the_cloud_lists_is_in_the_dp_round_and_its_ledger() -> None:
    """The pass trains under the round's plan: its steps join the ledger (ε grows at equal noise), the
    noise for a target ε covers both, and the pass moves the model."""
    seqs = sequences(32, seed=9)
    inputs, targets, hard = _lists(32, seed=9)
    lists = CloudListPass(inputs, targets, hard, random_negatives=6, epochs=1)
    fixed = PrivacySettings(mode="local", noise_multiplier=1.0)
    plain = train_on_shard_private(solid_model(), seqs, settings(), fixed, 10, 1, 2, 32, seed=2)
    model = solid_model()
    with_pass = train_on_shard_private(
        model, seqs, settings(), fixed, 10, 1, 2, 32, seed=2, cloud_lists=lists
    )
    steps = plain.released[2]
    assert with_pass.released == (1.0, plain.released[1], 2 * steps)
    assert with_pass.metrics["epsilon"] > plain.metrics["epsilon"]
    assert with_pass.metrics["epsilon"] == pytest.approx(epsilon_of([(1.0, plain.released[1], 2 * steps)],
                                                                    with_pass.metrics["delta"]))  # fmt: skip
    assert with_pass.metrics["rerank-positions"] == float((targets > 0).sum())
    assert 0 < with_pass.metrics["rerank-loss"] < 10
    # The target ε of the whole run (2 rounds) holds with the pass in every round.
    target = PrivacySettings(mode="local", target_epsilon=4.0)
    first = train_on_shard_private(
        solid_model(), seqs, settings(), target, 10, 1, 2, 32, seed=2, cloud_lists=lists
    )
    second = train_on_shard_private(solid_model(), seqs, settings(), target, 10, 1, 2, 32, seed=3,
                                    history=first.history, cloud_lists=lists)  # fmt: skip
    assert second.metrics["epsilon"] == pytest.approx(4.0, abs=0.03)


def test_the_pass_moves_the_model_beyond_the_local_epochs() -> None:
    seqs = sequences(32, seed=9)
    inputs, targets, hard = _lists(32, seed=9)
    lists = CloudListPass(inputs, targets, hard, random_negatives=6, epochs=1)
    fixed = PrivacySettings(mode="local", noise_multiplier=0.5)
    plain, listed = solid_model(), solid_model()
    train_on_shard_private(plain, seqs, settings(), fixed, 10, 1, 1, 32, seed=2)
    train_on_shard_private(listed, seqs, settings(), fixed, 10, 1, 1, 32, seed=2, cloud_lists=lists)
    assert not torch.equal(plain.item_meta[0].weight, listed.item_meta[0].weight)


def test_a_frozen_table_stays_put_through_the_pass_and_the_local_epochs() -> None:
    """The private part only with the pass over the cloud's lists: the id table leaves the round
    bit-identical (no gradient, no noise in either part), the rest trains."""
    inputs, targets, hard = _lists(32, seed=9)
    lists = CloudListPass(inputs, targets, hard, random_negatives=6, epochs=1)
    model = solid_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    privacy = PrivacySettings(mode="local", noise_multiplier=1.0, freeze_item_embeddings=True)
    result = train_on_shard_private(model, sequences(32, seed=9), settings(), privacy, 10, 1, 1, 32, seed=2,
                                    cloud_lists=lists)  # fmt: skip
    assert result.metrics["rerank-positions"] > 0
    assert torch.equal(model.item_embedding.weight, before["item_embedding.weight"])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"item_text.projection.weight", "semantic_trunk.item_embedding.weight"} <= changed


def test_dp_rounds_decay_their_last_local_epochs_by_the_plans_steps(monkeypatch) -> None:
    """The final decay under DP: the plan's steps per epoch set the schedule; ε does not depend on it."""
    from lsc4rec.client import private_training

    calls: list[tuple[int, int]] = []
    real = private_training.decay_lr_linearly

    def spy(optimizer, keep_steps: int, decay_steps: int):
        calls.append((keep_steps, decay_steps))
        return real(optimizer, keep_steps, decay_steps)

    monkeypatch.setattr(private_training, "decay_lr_linearly", spy)
    privacy = PrivacySettings(mode="local", noise_multiplier=1.0, grad_sample_mode="auto")
    results = [
        train_on_shard_private(
            solid_model(), sequences(32, seed=9), settings("bce"), privacy, 10, 2, 1, 32, seed=2,
            decay_epochs=decay,
        )
        for decay in (0, 1)
    ]  # fmt: skip
    steps = int(results[1].released[2]) // 2  # type: ignore[index]  # the round's steps over 2 epochs
    assert calls == [(steps, steps)]
    assert results[0].metrics["epsilon"] == results[1].metrics["epsilon"] > 0
