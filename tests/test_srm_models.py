"""Behavioural tests of the sequential recommenders: shapes, causality, padding invariance, consistency of
the scoring methods, gradients, a real learning check, ONNX export and Opacus per-sample gradients."""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from lsc4rec.models.srm import (
    DIN,
    SRM_CLASSES,
    GRU4Rec,
    SASRec,
    SequentialRecommender,
    TTT4Rec,
    bce_loss,
    build_srm,
    compute_loss,
    sampled_softmax_loss,
)

NUM_ITEMS = 25
MAX_LEN = 16

FACTORIES: dict[str, Callable[[], SequentialRecommender]] = {
    "sasrec": lambda: SASRec(
        NUM_ITEMS, hidden_size=16, num_blocks=2, num_heads=2, dropout=0.2, max_len=MAX_LEN
    ),
    "sasrec_post_ln": lambda: SASRec(
        NUM_ITEMS, hidden_size=16, num_heads=2, max_len=MAX_LEN, norm_first=False, intermediate_size=40
    ),
    "gru4rec": lambda: GRU4Rec(NUM_ITEMS, hidden_size=16, dropout=0.2),
    "gru4rec_2_layers": lambda: GRU4Rec(NUM_ITEMS, hidden_size=16, num_layers=2, gru_size=24),
    "din": lambda: DIN(NUM_ITEMS, hidden_size=16, attention_sizes=(16, 8), output_sizes=(32, 16)),
    "ttt4rec": lambda: TTT4Rec(
        NUM_ITEMS, hidden_size=16, num_heads=2, intermediate_size=32, dropout=0.2, ttt={"mini_batch_size": 3}
    ),
    "ttt4rec_linear": lambda: TTT4Rec(
        NUM_ITEMS,
        hidden_size=16,
        num_heads=2,
        intermediate_size=32,
        ttt={"layer": "linear", "mini_batch_size": 4},
    ),
}
ALL_MODELS = list(FACTORIES)
BASE_MODELS = ["sasrec", "gru4rec", "din"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_model(name: str, eval_mode: bool = True) -> SequentialRecommender:
    model = FACTORIES[name]()
    return model.eval() if eval_mode else model.train()


def left_padded(lengths: list[int], length: int, seed: int = 0) -> Tensor:
    """Random histories with the given numbers of real items, left-padded to ``length``."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        if n:
            rows[row, length - n :] = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen)
    return rows


def pad_left(x: Tensor, extra: int) -> Tensor:
    return torch.cat([torch.zeros(x.size(0), extra, dtype=x.dtype), x], dim=1)


LENGTHS = [8, 5, 1, 3, 8, 2]  # includes a row that is all padding but its last column
L = 8


def candidates_per_position(batch: int, length: int, num: int, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    cands = torch.randint(1, NUM_ITEMS + 1, (batch, length, num), generator=gen)
    cands[:, :, -1] = 0  # a padded candidate slot
    return cands


# ---------------------------------------------------------------------------- shapes and masking
@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shapes(name: str) -> None:
    model = make_model(name)
    inputs = left_padded(LENGTHS, L)
    batch = inputs.size(0)
    positions = inputs > 0
    num_pos = int(positions.sum())
    per_pos = candidates_per_position(batch, L, 4)
    shared = torch.tensor([3, 1, 0, 7, 9])
    with torch.no_grad():
        assert model.encode(inputs).shape == (batch, L, 16)
        assert model.position_scores(inputs).shape == (batch, L, NUM_ITEMS + 1)
        assert model.position_scores(inputs, per_pos).shape == (batch, L, 4)
        assert model.position_scores(inputs, shared).shape == (batch, L, 5)
        assert model.position_scores(inputs, positions=positions).shape == (num_pos, NUM_ITEMS + 1)
        assert model.position_scores(inputs, per_pos, positions).shape == (num_pos, 4)
        assert model.position_scores(inputs, shared, positions).shape == (num_pos, 5)
        assert model.score_all(inputs).shape == (batch, NUM_ITEMS + 1)
        assert model.score_candidates(inputs, per_pos[:, -1]).shape == (batch, 4)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_selected_positions_score_as_the_full_tensor(name: str) -> None:
    """Per-position candidates scored at selected positions only: the full tensor's rows and gradients."""
    inputs = left_padded(LENGTHS, L)
    positions = inputs > 0
    per_pos = candidates_per_position(inputs.size(0), L, 5)
    results = []
    for select in (True, False):
        torch.manual_seed(0)
        model = make_model(name)
        scores = (
            model.selected_position_scores(inputs, per_pos, positions)
            if select
            else model.position_scores(inputs, per_pos)[positions]
        )
        scores.masked_fill(torch.isinf(scores), 0.0).square().sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((scores.detach(), grads))
    (selected, selected_grads), (full, full_grads) = results
    assert selected.shape == (int(positions.sum()), 5)
    torch.testing.assert_close(selected, full, rtol=1e-6, atol=1e-6)
    assert torch.isneginf(selected[:, -1]).all()
    assert selected_grads.keys() == full_grads.keys() and selected_grads
    for key, grad in selected_grads.items():
        torch.testing.assert_close(grad, full_grads[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_padding_item_scores_minus_inf(name: str) -> None:
    model = make_model(name)
    inputs = left_padded(LENGTHS, L)
    with torch.no_grad():
        full = model.position_scores(inputs)
        assert torch.isneginf(full[..., 0]).all()
        assert torch.isfinite(full[..., 1:]).all()
        all_scores = model.score_all(inputs)
        assert torch.isneginf(all_scores[:, 0]).all() and torch.isfinite(all_scores[:, 1:]).all()
        cands = torch.tensor([[1, 0, 2]]).expand(inputs.size(0), -1)
        scored = model.score_candidates(inputs, cands)
        assert torch.isneginf(scored[:, 1]).all() and torch.isfinite(scored[:, [0, 2]]).all()
        shared = model.position_scores(inputs, torch.tensor([0, 4]))
        assert torch.isneginf(shared[..., 0]).all() and torch.isfinite(shared[..., 1]).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_short_and_empty_rows_produce_no_nan(name: str) -> None:
    model = make_model(name, eval_mode=False)
    inputs = left_padded([1, 0, 1], 6)  # two rows with only the last item, one row entirely padding
    targets = torch.zeros_like(inputs)
    targets[0, -1], targets[2, -1] = 3, 4
    for loss in ("ce", "sampled_softmax", "bce"):
        model.zero_grad()
        value = compute_loss(loss, model, inputs, targets, torch.Generator().manual_seed(0), num_negatives=4)
        value.backward()
        assert torch.isfinite(value)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert not torch.isnan(model.position_scores(inputs)).any()
        assert not torch.isnan(model.score_all(inputs)).any()
        assert not torch.isnan(model.encode(inputs)).any()


# ---------------------------------------------------------------------------- causality and padding
@pytest.mark.parametrize("name", ALL_MODELS)
def test_causality(name: str) -> None:
    model = make_model(name)
    inputs = left_padded(LENGTHS, L)
    per_pos = candidates_per_position(inputs.size(0), L, 3)
    shared = torch.tensor([2, 5, 11])
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        before = [
            model.position_scores(inputs),
            model.position_scores(inputs, per_pos),
            model.position_scores(inputs, shared),
        ]
        for t in (2, 4, 6):
            changed = inputs.clone()
            future = changed[:, t + 1 :]
            # Replace every real future item by another real item (padding stays padding).
            new_items = torch.randint(1, NUM_ITEMS + 1, future.shape, generator=gen)
            changed[:, t + 1 :] = torch.where(future > 0, new_items, future)
            assert not torch.equal(changed, inputs)
            after = [
                model.position_scores(changed),
                model.position_scores(changed, per_pos),
                model.position_scores(changed, shared),
            ]
            for old, new in zip(before, after, strict=True):
                torch.testing.assert_close(new[:, : t + 1], old[:, : t + 1], atol=1e-6, rtol=0)
            # ...and the future did change something, so the check is not vacuous.
            assert not torch.allclose(after[0][:, -1, 1:], before[0][:, -1, 1:])


@pytest.mark.parametrize("name", ALL_MODELS)
def test_padding_invariance(name: str) -> None:
    model = make_model(name)
    inputs = left_padded(LENGTHS, L)
    real = inputs > 0
    extra = 5
    padded = pad_left(inputs, extra)
    per_pos = candidates_per_position(inputs.size(0), L, 3)
    per_pos_padded = torch.cat([torch.ones(inputs.size(0), extra, 3, dtype=torch.long), per_pos], dim=1)
    cands = per_pos[:, -1]
    with torch.no_grad():
        pairs = [
            (model.position_scores(inputs)[real], model.position_scores(padded)[:, extra:][real]),
            (
                model.position_scores(inputs, per_pos)[real],
                model.position_scores(padded, per_pos_padded)[:, extra:][real],
            ),
            (
                model.position_scores(inputs, torch.tensor([4, 9])),
                model.position_scores(padded, torch.tensor([4, 9]))[:, extra:],
            ),
            (model.score_all(inputs), model.score_all(padded)),
            (model.score_candidates(inputs, cands), model.score_candidates(padded, cands)),
            (model.encode(inputs)[real], model.encode(padded)[:, extra:][real]),
        ]
        # A row's outputs do not depend on the other rows of the batch or on how they are padded.
        alone = model.score_all(inputs[2:3, -2:])
        pairs.append((alone, model.score_all(inputs)[2:3]))
    for reference, other in pairs[:3]:
        finite = torch.isfinite(reference)
        torch.testing.assert_close(other[finite], reference[finite], atol=1e-5, rtol=0)
    for reference, other in pairs[3:]:
        torch.testing.assert_close(other, reference, atol=1e-5, rtol=0)


def test_sasrec_positions_are_right_aligned_and_length_is_checked() -> None:
    model = make_model("sasrec")
    history = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        short = model.score_all(history)
        full = model.score_all(pad_left(history, MAX_LEN - 3))
    torch.testing.assert_close(short, full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_len"):
        model.score_all(torch.ones(1, MAX_LEN + 1, dtype=torch.long))


def test_sasrec_feed_forward_width() -> None:
    paper = SASRec(NUM_ITEMS, hidden_size=16, max_len=MAX_LEN)
    wide = SASRec(NUM_ITEMS, hidden_size=16, max_len=MAX_LEN, intermediate_size=64)
    assert paper.blocks[0].ffn.net[0].weight.shape == (16, 16)
    assert wide.blocks[0].ffn.net[0].weight.shape == (64, 16)
    assert wide.blocks[0].ffn.net[3].weight.shape == (16, 64)
    extra = sum(p.numel() for p in wide.parameters()) - sum(p.numel() for p in paper.parameters())
    assert extra == 2 * 2 * (16 * 48) + 2 * 48  # two blocks, two wider matrices and one wider bias each
    with pytest.raises(ValueError, match="intermediate_size"):
        SASRec(NUM_ITEMS, hidden_size=16, intermediate_size=0)


# ---------------------------------------------------------------------------- consistency of the API
@pytest.mark.parametrize("name", ALL_MODELS)
def test_score_candidates_equals_score_all_gathered(name: str) -> None:
    model = make_model(name)
    inputs = left_padded(LENGTHS, L)
    cands = candidates_per_position(inputs.size(0), 1, 6)[:, 0]  # last slot is padding (id 0)
    with torch.no_grad():
        all_scores = model.score_all(inputs)
        gathered = all_scores.gather(1, cands)
        torch.testing.assert_close(model.score_candidates(inputs, cands), gathered, atol=1e-5, rtol=1e-5)
        # score_all is the last position of the causal position scores.
        torch.testing.assert_close(model.position_scores(inputs)[:, -1], all_scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_candidate_forms_agree(name: str) -> None:
    """Per-position candidates, a shared list and the full catalogue give the same scores."""
    model = make_model(name)
    inputs = left_padded(LENGTHS, L)
    shared = torch.tensor([5, 0, 1, 17, 25])
    with torch.no_grad():
        full = model.position_scores(inputs)
        via_shared = model.position_scores(inputs, shared)
        expanded = shared.expand(inputs.size(0), L, -1)
        via_per_pos = model.position_scores(inputs, expanded)
    torch.testing.assert_close(via_shared, via_per_pos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(via_shared, full[..., shared], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_position_selection_equals_masked_full(name: str) -> None:
    model = make_model(name)
    inputs = left_padded(LENGTHS, L)
    positions = inputs > 0
    positions[0, 3] = False  # an arbitrary mask, not only the padding pattern
    per_pos = candidates_per_position(inputs.size(0), L, 3)
    shared = torch.tensor([2, 8])
    with torch.no_grad():
        for cands in (None, per_pos, shared):
            torch.testing.assert_close(
                model.position_scores(inputs, cands, positions),
                model.position_scores(inputs, cands)[positions],
            )
        targets = torch.randint(1, NUM_ITEMS + 1, inputs.shape).unsqueeze(-1)
        pos, neg = model.position_scores_with_negatives(inputs, targets, shared, positions)
        torch.testing.assert_close(pos, model.position_scores(inputs, targets, positions))
        torch.testing.assert_close(neg, model.position_scores(inputs, shared, positions))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_eval_is_deterministic_and_train_uses_dropout(name: str) -> None:
    model = make_model(name)
    inputs = left_padded(LENGTHS, L)
    with torch.no_grad():
        assert torch.equal(model.position_scores(inputs), model.position_scores(inputs))
        assert torch.equal(model.score_all(inputs), model.score_all(inputs))
        if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
            model.train()
            assert not torch.equal(model.position_scores(inputs), model.position_scores(inputs))


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce"])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_gradients_reach_every_parameter(name: str, loss: str) -> None:
    model = make_model(name, eval_mode=False)
    inputs = left_padded(LENGTHS, L)
    targets = torch.where(inputs > 0, torch.randint(1, NUM_ITEMS + 1, inputs.shape), 0)
    value = compute_loss(loss, model, inputs, targets, torch.Generator().manual_seed(0), num_negatives=6)
    value.backward()
    # DIN's final output bias shifts every candidate's logit equally: softmax losses are blind to it.
    shift_invariant = {"output.rest.net.5.bias"} if isinstance(model, DIN) and loss != "bce" else set()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
        if param_name in shift_invariant:
            assert param.grad.abs().sum() < 1e-5, param_name
        else:
            assert param.grad.abs().sum() > 0, param_name
    assert model.item_embedding.weight.grad[0].abs().sum() == 0  # padding row never learns


def test_din_matches_reference_loop() -> None:
    """DIN's batched target attention equals a direct loop over the paper's formula."""
    model = make_model("din")
    history = left_padded([4, 2, 1], 5)
    cands = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    emb = model.item_embedding.weight
    att, out = model.attention, model.output

    def activation_unit(e_c: Tensor, e_h: Tensor) -> Tensor:
        # [e_c, e_h, e_c - e_h, e_c * e_h] through the first dense layer, written as one concatenated matrix.
        w = torch.cat(
            [
                att.candidate_term.weight,
                att.history_term.weight,
                torch.zeros_like(att.history_term.weight),
                att.product_term.weight,
            ],
            dim=1,
        )
        first = torch.cat([e_c, e_h, e_c - e_h, e_c * e_h]) @ w.t() + att.candidate_term.bias
        return att.rest(first)

    expected = torch.zeros(3, 3)
    with torch.no_grad():
        for b in range(3):
            for j, c in enumerate(cands[b]):
                e_c = emb[c]
                interest = sum(
                    (activation_unit(e_c, emb[h]) * emb[h] for h in history[b] if h != 0), torch.zeros(16)
                )
                first = (
                    out.interest_term(interest) + out.candidate_term(e_c) + out.product_term(interest * e_c)
                )
                expected[b, j] = out.rest(first)
        torch.testing.assert_close(model.score_candidates(history, cands), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- learning check
def successor_data(
    num_users: int = 48, length: int = 10, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Users walk i -> i+1 (wrapping) from random starts: train inputs/targets, histories, next items."""
    rng = random.Random(seed)
    seqs = []
    for _ in range(num_users):
        start, n = rng.randrange(NUM_ITEMS), rng.randint(4, length + 1)
        seqs.append([(start + k) % NUM_ITEMS + 1 for k in range(n)])

    def pad(rows: list[list[int]]) -> Tensor:
        return torch.tensor([[0] * (length - len(r)) + r for r in rows])

    inputs, targets = pad([s[:-1] for s in seqs]), pad([s[1:] for s in seqs])
    histories = pad([s[-length:] for s in seqs])
    next_items = torch.tensor([s[-1] % NUM_ITEMS + 1 for s in seqs])
    return inputs, targets, histories, next_items


LEARNING_SETUPS = {
    "sasrec": (lambda: SASRec(NUM_ITEMS, hidden_size=32, dropout=0.1, max_len=10), "ce"),
    "gru4rec": (lambda: GRU4Rec(NUM_ITEMS, hidden_size=32, dropout=0.1), "ce"),
    # DIN trains with sampled softmax (its configured loss; a full softmax costs items x length per position).
    "din": (
        lambda: DIN(NUM_ITEMS, hidden_size=32, attention_sizes=(32, 16), output_sizes=(64, 32), dropout=0.0),
        "sampled_softmax",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", BASE_MODELS)
def test_learns_the_successor_pattern(name: str) -> None:
    factory, loss = LEARNING_SETUPS[name]
    model = factory()
    inputs, targets, histories, next_items = successor_data()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        accuracy_before = (model.score_all(histories).argmax(-1) == next_items).float().mean().item()
    model.train()
    losses = []
    for _ in range(200):
        value = compute_loss(loss, model, inputs, targets, gen, num_negatives=8)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model.score_all(histories).argmax(-1) == next_items).float().mean().item()
    assert sum(losses[-10:]) / 10 < 0.1 * losses[0], (losses[0], losses[-10:])
    assert accuracy_before < 0.2
    assert accuracy >= 0.9, accuracy


# ---------------------------------------------------------------------------- factory
def test_build_srm_names_and_errors() -> None:
    for name, cls in SRM_CLASSES.items():
        model = build_srm(name, 10, hidden_size=8)
        assert isinstance(model, cls) and isinstance(model, SequentialRecommender)
        assert model.num_items == 10 and model.hidden_size == 8
        assert model.item_embedding.weight.shape == (11, 8) and model.item_embedding.padding_idx == 0
    assert build_srm("sasrec", 10, num_blocks=3, max_len=7).max_len == 7
    with pytest.raises(ValueError, match=r"'din', 'gru4rec', 'sasrec'"):
        build_srm("bert4rec", 10)
    with pytest.raises(TypeError, match="num_block"):
        build_srm("sasrec", 10, num_block=3)
    with pytest.raises(TypeError, match="max_len"):
        build_srm("gru4rec", 10, max_len=50)
    with pytest.raises(ValueError, match="activation"):
        build_srm("din", 10, activation="dice")
    with pytest.raises(ValueError, match="divisible"):
        build_srm("sasrec", 10, hidden_size=10, num_heads=4)
    with pytest.raises(ValueError, match="num_items"):
        build_srm("gru4rec", 0)


# ---------------------------------------------------------------------------- deployment paths
class _ScoreCandidates(torch.nn.Module):
    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: Tensor, candidates: Tensor) -> Tensor:
        return self.model.score_candidates(history, candidates)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "din"])
def test_onnx_export_of_score_candidates(name: str) -> None:
    # Required dependencies: a broken install must fail here, not skip.
    import onnx  # noqa: F401
    import onnxruntime as ort

    model = make_model(name)
    wrapper = _ScoreCandidates(model).eval()
    history = left_padded([6, 2], 6)
    cands = torch.tensor([[1, 2, 0], [3, 4, 5]])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (history, cands),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["history", "candidates"],
            output_names=["scores"],
            dynamic_axes={
                "history": {0: "batch", 1: "length"},
                "candidates": {0: "batch", 1: "num"},
                "scores": {0: "batch", 1: "num"},
            },
        )
    wrapper.eval()  # export restores the wrapper's mode on the submodules
    session = ort.InferenceSession(buffer.getvalue())
    # Run on other batch, length and candidate sizes than the export example.
    for hist, cand in [
        (history, cands),
        (left_padded([9, 1, 4], 9, seed=3), candidates_per_position(3, 1, 4)[:, 0]),
    ]:
        got = session.run(None, {"history": hist.numpy(), "candidates": cand.numpy()})[0]
        with torch.no_grad():
            expected = model.score_candidates(hist, cand)
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "din"])
def test_opacus_per_sample_gradients_add_up(name: str) -> None:
    """With candidate-based losses every parameter use is seen by Opacus' per-layer hooks."""
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ModuleValidator.fix(build_srm(name, NUM_ITEMS, hidden_size=8, dropout=0.0))
        assert ModuleValidator.validate(model, strict=False) == []
        wrapped = GradSampleModule(model, loss_reduction="sum")
        inputs = left_padded([5, 3, 1], 5)
        targets = torch.where(inputs > 0, torch.randint(1, NUM_ITEMS + 1, inputs.shape), 0)
        for loss in (
            lambda m: bce_loss(m, inputs, targets, torch.Generator().manual_seed(0), 2),
            lambda m: sampled_softmax_loss(m, inputs, targets, 5, torch.Generator().manual_seed(0)),
        ):
            wrapped.zero_grad(set_to_none=True)
            for param in wrapped.parameters():
                param.grad_sample = None
            loss(model).backward()
            for param_name, param in wrapped.named_parameters():
                assert param.grad_sample is not None, param_name
                assert param.grad_sample.shape[0] == inputs.size(0)
                torch.testing.assert_close(param.grad_sample.sum(0), param.grad, atol=1e-6, rtol=1e-5)
