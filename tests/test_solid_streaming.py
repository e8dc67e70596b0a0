"""SOLID streaming on a streaming base (TTT4Rec): prefill + step equal full re-encoding for every ablation,
candidate scoring, and clear errors for a base that does not stream and for bad streamed ids."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

from lsc4rec.models.solid import SolidRecommender
from lsc4rec.models.solid.dual_model import SolidStreamState

NUM_ITEMS = 30
CODEBOOK_SIZES = (4, 2)


@pytest.fixture(autouse=True)
def _one_thread_and_seed() -> Iterator[None]:
    # Tiny tensors: extra intra-op threads only add contention on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def random_codes(seed: int = 0) -> Tensor:
    """Random semantic ids ``[NUM_ITEMS + 1, levels]`` within the codebook sizes (row 0 = padding)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, k, (NUM_ITEMS + 1,), generator=gen) for k in CODEBOOK_SIZES], 1)
    codes[0] = 0
    return codes


def solid_on_ttt(layer: str, **flags: Any) -> SolidRecommender:
    """A small SOLID model on a TTT4Rec base, in eval mode, with weights perturbed so every part matters."""
    model = SolidRecommender(
        NUM_ITEMS,
        base="ttt4rec",
        hidden_size=16,
        dropout=0.2,
        codebook_sizes=CODEBOOK_SIZES,
        meta_size=4,
        # A wide clip so the item-generated parameters are not all pinned at +-t.
        clip=0.5,
        base_params={
            "ttt": {"layer": layer, "mini_batch_size": 4},
            "num_blocks": 1,
            "num_heads": 2,
            "intermediate_size": 32,
        },
        **flags,
    )
    # At the N(0, 0.02) initialisation the TTT inner loop barely moves its fast weights; larger weights make
    # a wrong streamed state show in the scores.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=gen))
    model.set_semantic_ids(random_codes())
    return model.eval()


def left_padded(lengths: list[int], width: int, seed: int = 0) -> Tensor:
    """Random histories with the given numbers of real items, left-padded with 0 to ``width``."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        if n:
            rows[row, width - n :] = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen)
    return rows


ABLATIONS = {"full": {}, "no_semantic_trunk": {"semantic_trunk": False}, "static": {"generation": False}}


@pytest.mark.parametrize("flags", list(ABLATIONS.values()), ids=list(ABLATIONS))
@pytest.mark.parametrize("layer", ["mlp", "linear"])
def test_streaming_equals_full_reencoding(layer: str, flags: dict[str, Any]) -> None:
    model = solid_on_ttt(layer, **flags)
    assert model.supports_streaming
    assert model.item_trunk.supports_streaming
    lengths = [0, 3, 4, 9]  # an empty row; positions inside the TTT mini-batch (4) differ per row
    prefix = left_padded(lengths, 9, seed=1)
    appended = torch.randint(1, NUM_ITEMS + 1, (len(lengths), 11), generator=torch.Generator().manual_seed(2))
    full = torch.cat([prefix, appended], dim=1)
    candidate_gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        state, hidden = model.prefill(prefix)
        assert isinstance(state, SolidStreamState)
        assert (state.semantic is None) == (flags.get("semantic_trunk") is False)
        # The empty row follows TTT4Rec: zero vector (encode's value at padding).
        torch.testing.assert_close(hidden, model.encode(prefix)[:, -1], rtol=0, atol=1e-5)
        assert hidden[0].abs().sum() == 0
        torch.testing.assert_close(
            model.score_hidden(hidden)[1:], model.score_all(prefix)[1:], rtol=0, atol=1e-5
        )
        for t in range(appended.size(1)):
            _, retry_hidden = model.step(state, appended[:, t])
            state, hidden = model.step(state, appended[:, t])  # the input state is left unchanged
            torch.testing.assert_close(hidden, retry_hidden, rtol=0, atol=0)
            history = full[:, : 10 + t]
            scores = model.score_hidden(hidden)
            assert scores.shape == (len(lengths), NUM_ITEMS + 1) and bool(torch.isneginf(scores[:, 0]).all())
            torch.testing.assert_close(scores, model.score_all(history), rtol=0, atol=1e-5)
            candidates = torch.randint(0, NUM_ITEMS + 1, (len(lengths), 6), generator=candidate_gen)
            torch.testing.assert_close(
                model.score_hidden(hidden, candidates),
                model.score_candidates(history, candidates),
                rtol=0,
                atol=1e-5,
            )
        # From an empty state, item by item.
        state = model.init_state(batch_size=1)
        for t in range(full.size(1)):
            if full[3, t] != 0:
                state, hidden = model.step(state, full[3:4, t])
        torch.testing.assert_close(model.score_hidden(hidden), model.score_all(full[3:4]), rtol=0, atol=1e-5)


def test_score_hidden_with_candidates_equals_score_candidates() -> None:
    model = solid_on_ttt("mlp")
    history = left_padded([2, 5, 7], 7, seed=4)
    candidates = torch.tensor([[0, 1, 5, 30], [7, 7, 0, 2], [3, 4, 5, 6]])
    with torch.no_grad():
        _, hidden = model.prefill(history)
        scores = model.score_hidden(hidden, candidates)
        torch.testing.assert_close(scores, model.score_candidates(history, candidates), rtol=0, atol=1e-5)
    assert bool(torch.isneginf(scores[candidates == 0]).all())
    assert bool(torch.isfinite(scores[candidates != 0]).all())


def test_a_base_that_does_not_stream_is_reported_clearly() -> None:
    model = SolidRecommender(
        NUM_ITEMS,
        base="sasrec",
        hidden_size=16,
        codebook_sizes=CODEBOOK_SIZES,
        base_params={"num_blocks": 1, "num_heads": 2},
        max_len=10,
    )
    model.set_semantic_ids(random_codes())
    assert not model.supports_streaming
    assert not model.item_trunk.supports_streaming
    with pytest.raises(ValueError, match=r"model\.base = 'sasrec'"):
        model.prefill(torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"model\.base = 'sasrec'"):
        model.init_state(batch_size=1)


def test_streaming_rejects_padding_bad_ids_and_missing_semantic_ids() -> None:
    model = solid_on_ttt("linear")
    with torch.no_grad():
        state, _ = model.prefill(left_padded([2, 3], 3))
        with pytest.raises(ValueError, match=r"1\.\.30"):
            model.step(state, torch.tensor([3, 0]))
        with pytest.raises(ValueError, match=r"1\.\.30"):
            model.step(state, torch.tensor([3, NUM_ITEMS + 1]))
        with pytest.raises(ValueError, match="B = 2"):
            model.step(state, torch.tensor([3]))
        with pytest.raises(ValueError, match=r"\[B\]"):
            model.step(state, torch.tensor([[3, 4]]))
    fresh = SolidRecommender(
        NUM_ITEMS,
        base="ttt4rec",
        hidden_size=16,
        codebook_sizes=CODEBOOK_SIZES,
        base_params={"num_blocks": 1, "num_heads": 2, "intermediate_size": 32},
    )
    with pytest.raises(RuntimeError, match="no semantic ids yet"):
        fresh.prefill(torch.tensor([[0, 1, 2]]))
