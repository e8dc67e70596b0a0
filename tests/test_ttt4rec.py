"""TTT4Rec and its TTT layers: dual form vs the primal reference, causality, left-padding invariance,
gradient flow, streaming device updates vs full re-encoding, learning a pattern end to end, config errors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_pattern_dataset
from torch import Tensor

from lsc4rec.config import compose_config
from lsc4rec.models.srm import SRM_CLASSES, TTT4Rec, build_srm, compute_loss
from lsc4rec.models.srm.ttt import (
    TTTMLP,
    TTTLayer,
    TTTLinear,
    gelu_tanh,
    gelu_tanh_grad,
    layer_norm_l2_grad,
    per_head_layer_norm,
)
from lsc4rec.settings import model_config
from lsc4rec.simulations.centralized import run_centralized
from lsc4rec.training import build_model_from_config

NUM_ITEMS = 30
LAYERS = {"linear": TTTLinear, "mlp": TTTMLP}


@pytest.fixture(autouse=True)
def _one_thread_and_seed() -> Iterator[None]:
    # Tiny tensors: extra intra-op threads only add contention on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def sharpened(layer: TTTLayer) -> TTTLayer:
    """Give a layer's inner loop a large effect, so a wrong update rule shows in its outputs.

    At the default initialisation (std 0.02, base_lr 1) the fast weights barely move; here they start larger,
    the learning-rate gate and the per-position offsets κ_i are non-trivial, the inner LayerNorm has a
    non-identity affine map and the output projection is the identity (outputs of order 1).
    """
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w_name, b_name in layer.weight_names:
            weight = getattr(layer, w_name)
            weight.copy_(torch.randn(weight.shape, generator=gen) / math.sqrt(weight.shape[-2]))
            bias = getattr(layer, b_name)
            bias.copy_(0.3 * torch.randn(bias.shape, generator=gen))
        for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
            proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen) / math.sqrt(layer.hidden_size))
        layer.o_proj.weight.copy_(torch.eye(layer.hidden_size))
        layer.lr_weight.copy_(0.5 * torch.randn(layer.lr_weight.shape, generator=gen))
        layer.lr_bias.copy_(torch.randn(layer.lr_bias.shape, generator=gen))
        layer.learnable_token_idx.copy_(0.3 * torch.randn(layer.learnable_token_idx.shape, generator=gen))
        layer.ttt_norm_weight.copy_(1.0 + 0.3 * torch.randn(layer.ttt_norm_weight.shape, generator=gen))
        layer.ttt_norm_bias.copy_(0.3 * torch.randn(layer.ttt_norm_bias.shape, generator=gen))
    layer.base_lr = 2.0
    return layer


def make_model(layer: str, mini_batch_size: int = 4, num_blocks: int = 2) -> TTT4Rec:
    model = TTT4Rec(
        NUM_ITEMS,
        hidden_size=16,
        num_blocks=num_blocks,
        num_heads=2,
        intermediate_size=32,
        dropout=0.2,
        ttt={"layer": layer, "mini_batch_size": mini_batch_size},
    )
    for block in model.blocks:
        sharpened(block.ttt)
    return model.eval()


def left_padded(lengths: list[int], width: int, seed: int = 0) -> Tensor:
    """Random histories with the given numbers of real items, left-padded with 0 to ``width``."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        if n:
            rows[row, width - n :] = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen)
    return rows


# ---------------------------------------------------------------------------- closed-form pieces
def test_closed_form_inner_pieces_match_torch() -> None:
    """The dual form's hand-written LayerNorm, LN+L2 backward and GELU' agree with torch / autograd."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 5, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, 5, 8, generator=gen, dtype=torch.float64)
    weight = 1 + torch.randn(3, 1, 8, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, 1, 8, generator=gen, dtype=torch.float64)
    normed = per_head_layer_norm(z, weight, bias)
    reference = F.layer_norm(z, (8,), eps=1e-6) * weight + bias
    torch.testing.assert_close(normed, reference)
    (autograd,) = torch.autograd.grad(0.5 * (normed - target).pow(2).sum(), z)
    torch.testing.assert_close(layer_norm_l2_grad(z.detach(), target, weight, bias), autograd)
    x = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    (gelu_autograd,) = torch.autograd.grad(gelu_tanh(x).sum(), x)
    torch.testing.assert_close(gelu_tanh_grad(x.detach()), gelu_autograd)


# ---------------------------------------------------------------------------- dual form == primal
# float32 within the required 1e-5; float64 shows the two forms are the same function, not just close.
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("mini_batch_size", [1, 3, 8])
@pytest.mark.parametrize("layer", ["linear", "mlp"])
def test_dual_form_equals_primal(
    layer: str, mini_batch_size: int, dtype: torch.dtype, tolerance: float
) -> None:
    ttt = sharpened(LAYERS[layer](16, 2, mini_batch_size=mini_batch_size)).to(dtype)
    x = torch.randn(3, 11, 16, dtype=dtype)  # 11 is not a multiple of 3 or 8: the last mini-batch is partial
    valid = torch.ones(3, 11, dtype=torch.bool)
    valid[1, 7:] = False  # a right-padded row
    with torch.no_grad():
        dual = ttt(x, valid)
        primal = ttt.forward_primal(x, valid)
        ttt.base_lr = 0.0
        frozen = ttt(x, valid)
    real = valid.unsqueeze(-1).expand_as(dual)
    assert (dual - primal)[real].abs().max().item() < tolerance
    # The inner updates matter: without them the outputs are far away (so the comparison is not vacuous).
    assert (dual - frozen)[real].abs().max().item() > 0.1


@pytest.mark.parametrize("layer", ["linear", "mlp"])
def test_dual_form_outer_gradients_equal_primal(layer: str) -> None:
    """Training differentiates through the inner updates: the dual form's outer gradients are the primal's."""
    ttt = sharpened(LAYERS[layer](8, 2, mini_batch_size=3))
    x = torch.randn(2, 7, 8, requires_grad=True)
    weights = torch.randn(2, 7, 8)
    names = [name for name, _ in ttt.named_parameters()]
    params = [param for _, param in ttt.named_parameters()]
    dual = torch.autograd.grad((ttt(x) * weights).sum(), [*params, x])
    primal = torch.autograd.grad((ttt.forward_primal(x, create_graph=True) * weights).sum(), [*params, x])
    for name, got, expected in zip([*names, "input"], dual, primal, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=name)
    assert all(g.abs().sum() > 0 for g in dual)


# ---------------------------------------------------------------------------- causality and padding
@pytest.mark.parametrize("layer", ["linear", "mlp"])
def test_outputs_are_causal(layer: str) -> None:
    model = make_model(layer)
    history = left_padded([14, 9], 14)
    changed = history.clone()
    cut = 9  # inside a mini-batch of 4 (row 1's real items start at column 5)
    changed[:, cut + 1 :] = (history[:, cut + 1 :] % NUM_ITEMS) + 1
    with torch.no_grad():
        before, after = model.encode(history), model.encode(changed)
    torch.testing.assert_close(before[:, : cut + 1], after[:, : cut + 1], rtol=0, atol=0)
    assert (before[:, cut + 1 :] - after[:, cut + 1 :]).abs().amax(dim=-1).min() > 1e-3


@pytest.mark.parametrize("layer", ["linear", "mlp"])
def test_padding_never_changes_real_outputs(layer: str) -> None:
    model = make_model(layer)
    lengths = [13, 5, 1, 8, 0, 11]  # includes a multiple of b, an empty row and partial mini-batches
    history = left_padded(lengths, 13)
    is_item = history != 0
    with torch.no_grad():
        reference = model.encode(history)
        for extra in (3, 17):
            padded = torch.cat([torch.zeros(len(lengths), extra, dtype=torch.long), history], dim=1)
            out = model.encode(padded)
            torch.testing.assert_close(out[:, extra:], reference, rtol=0, atol=1e-6)
            assert out[:, :extra].abs().max() == 0
            scores = model.score_all(padded)
            torch.testing.assert_close(scores, model.score_all(history), rtol=0, atol=1e-6)
        # Mini-batches are aligned to each row's first item: a padded row encodes as its items alone.
        for row, n in enumerate(lengths):
            if n:
                alone = model.encode(history[row : row + 1, 13 - n :])
                torch.testing.assert_close(reference[row : row + 1, 13 - n :], alone, rtol=0, atol=1e-6)
    assert reference[~is_item].abs().max() == 0


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("layer", ["linear", "mlp"])
def test_gradients_reach_every_parameter(layer: str) -> None:
    model = make_model(layer, mini_batch_size=8).train()
    sequences = left_padded([21, 21, 15, 9], 21)
    inputs, targets = sequences[:, :-1], sequences[:, 1:] * (sequences[:, :-1] != 0)
    loss = compute_loss("ce", model, inputs, targets)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("layer", ["linear", "mlp"])
def test_streaming_equals_full_reencoding(layer: str) -> None:
    model = make_model(layer)
    lengths = [0, 3, 4, 9]  # per-row positions inside the mini-batch differ; 4 fills one exactly
    prefix = left_padded(lengths, 9, seed=1)
    appended = torch.randint(1, NUM_ITEMS + 1, (len(lengths), 11), generator=torch.Generator().manual_seed(2))
    full = torch.cat([prefix, appended], dim=1)
    with torch.no_grad():
        encoded = model.encode(full)
        state, hidden = model.prefill(prefix)
        torch.testing.assert_close(hidden, encoded[:, 8], rtol=0, atol=1e-5)
        assert state.length.tolist() == lengths
        for t in range(appended.size(1)):
            _, retry_hidden = model.step(state, appended[:, t])
            state, hidden = model.step(state, appended[:, t])  # the input state is left unchanged
            torch.testing.assert_close(hidden, retry_hidden, rtol=0, atol=0)
            torch.testing.assert_close(hidden, encoded[:, 9 + t], rtol=0, atol=1e-5)
            history = full[:, : 10 + t]
            torch.testing.assert_close(
                model.score_hidden(hidden), model.score_all(history), rtol=0, atol=1e-5
            )
            candidates = torch.randint(0, NUM_ITEMS + 1, (len(lengths), 6))
            torch.testing.assert_close(
                model.score_hidden(hidden, candidates),
                model.score_candidates(history, candidates),
                rtol=0,
                atol=1e-5,
            )
        assert state.length.tolist() == [n + appended.size(1) for n in lengths]
        # From an empty state, item by item.
        state = model.init_state(batch_size=1)
        for t in range(full.size(1)):
            state, hidden = model.step(state, full[3:4, t])
        torch.testing.assert_close(hidden, encoded[3:4, -1], rtol=0, atol=1e-5)


def test_streaming_state_size_does_not_grow_with_history() -> None:
    model = make_model("mlp")

    def state_numel(length: int) -> int:
        with torch.no_grad():
            state, _ = model.prefill(left_padded([length], length))
        return sum(
            t.numel() for layer in state.layers for t in [*layer.weights.values(), *layer.grad_sums.values()]
        )

    assert state_numel(3) == state_numel(40) > 0


def test_streaming_rejects_padding_and_bad_shapes() -> None:
    model = make_model("linear")
    state = model.init_state(batch_size=2)
    with pytest.raises(ValueError, match=r"1\.\.30"):
        model.step(state, torch.tensor([3, 0]))
    with pytest.raises(ValueError, match=r"1\.\.30"):
        model.step(state, torch.tensor([3, NUM_ITEMS + 1]))
    with pytest.raises(ValueError, match="B = 2"):
        model.step(state, torch.tensor([3]))


# ---------------------------------------------------------------------------- end to end and config
@pytest.mark.parametrize("layer", ["mlp", "linear"])
def test_centralized_run_learns_the_pattern(layer: str, tmp_path: Path) -> None:
    pattern = write_pattern_dataset(tmp_path / "pattern.txt", num_users=300, num_items=60)
    cfg = compose_config(
        [
            "model=ttt4rec",
            f"model.ttt.layer={layer}",
            "dataset=beauty",
            "data.name=pattern",
            f"data.path={pattern}",
            "data.max_len=10",
            "train.epochs=15",
            "train.batch_size=64",
            "train.lr=0.005",
            "train.patience=3",
            "train.progress=false",
            "model.dropout=0.1",
            "eval.sampled_negatives=20",
            "threads=1",
        ]
    )
    model = build_model_from_config(model_config(cfg.model), num_items=60, max_len=10)
    assert isinstance(model, TTT4Rec) and isinstance(model.blocks[0].ttt, LAYERS[layer])
    summary = run_centralized(cfg, tmp_path / "run")
    full = summary["test"]["full"]
    # Random ranking over 60 items gives NDCG@10 ~ 0.07; the successor pattern is fully predictable.
    assert full["HR@10"] > 0.9, full
    assert full["NDCG@10"] > 0.7, full


def test_config_defaults_and_bad_values() -> None:
    cfg = compose_config(["model=ttt4rec"])
    model = build_model_from_config(model_config(cfg.model), num_items=50, max_len=50)
    assert isinstance(model, TTT4Rec) and SRM_CLASSES["ttt4rec"] is TTT4Rec
    ttt = model.blocks[0].ttt
    assert isinstance(ttt, TTTMLP) and len(model.blocks) == 1
    # The defaults measured best on Beauty (README): d=128 over 4 heads, FFN 512, dropout 0.5.
    assert (ttt.num_heads, ttt.head_size, ttt.mini_batch_size) == (4, 32, 8)
    assert (ttt.base_lr, ttt.rope_theta) == (1.0, 1000.0)
    assert model.blocks[0].ffn.up_proj.out_features == 512
    assert cfg.model.dropout == 0.5
    with pytest.raises(ValueError, match=r"ttt\.layer must be one of"):
        build_model_from_config(
            model_config(compose_config(["model=ttt4rec", "model.ttt.layer=lstm"]).model), 50, 50
        )
    with pytest.raises(ValueError, match="divisible"):
        build_srm("ttt4rec", 10, hidden_size=10, num_heads=4)
    with pytest.raises(ValueError, match="mini_batch_size must be >= 1"):
        build_srm("ttt4rec", 10, ttt={"mini_batch_size": 0})
    with pytest.raises(ValueError, match=r"unknown ttt option\(s\) \['mini_batch'\]"):
        build_srm("ttt4rec", 10, ttt={"mini_batch": 4})
    with pytest.raises(ValueError, match="must be even"):
        build_srm("ttt4rec", 10, hidden_size=12, num_heads=4)
    with pytest.raises(ValueError, match="rope_theta"):
        build_srm("ttt4rec", 10, ttt={"rope_theta": 0})
    with pytest.raises(ValueError, match="num_blocks"):
        build_srm("ttt4rec", 10, num_blocks=0)
