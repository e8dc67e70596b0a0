"""Local DP-SGD in physical chunks (``privacy.physical_batch_size``): the same mechanism, less memory.

A Poisson batch computed chunk by chunk must take exactly the step the whole batch takes (each example clipped
alone, one noise draw per batch, one optimizer step, one accountant step), in every engine; and no engine may
see more rows at once than the chunk size.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_dp_solid import _lists, solid_model
from test_privacy import NUM_ITEMS, sequences, settings

import lsc4rec.client.private_training as private_training
from lsc4rec.client.dp_rows import RowGatherStep
from lsc4rec.client.private_training import (
    CloudListPass,
    chunk_negatives,
    physical_chunks,
    train_on_shard_private,
)
from lsc4rec.models.srm import build_srm
from lsc4rec.privacy import PrivacySettings

#: Batches of about 16 examples in chunks of 3 (the last one shorter): every batch splits unevenly.
BATCH, CHUNK = 16, 3


def test_chunks_cover_the_batch_in_order_and_zero_means_at_once() -> None:
    assert physical_chunks(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert physical_chunks(6, 3) == [slice(0, 3), slice(3, 6)]
    assert physical_chunks(7, 0) == [slice(0, 7)]
    assert physical_chunks(2, 5) == [slice(0, 2)]
    per_position = torch.arange(7 * 2 * 3).reshape(7, 2, 3)
    assert torch.equal(chunk_negatives(per_position, slice(3, 6)), per_position[3:6])
    shared = torch.arange(5)
    assert chunk_negatives(shared, slice(3, 6)) is shared
    assert chunk_negatives(None, slice(0, 1)) is None


def test_a_negative_chunk_size_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"privacy.physical_batch_size must be >= 0.*got -1"):
        PrivacySettings(mode="local", noise_multiplier=1.0, physical_batch_size=-1)


def _rows_seen(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many examples each per-example gradient computation receives, in any engine."""
    seen: list[int] = []
    original_rows = RowGatherStep.clipped_sum

    def spy_rows(self, inputs, *args, **kwargs):
        seen.append(int(inputs.size(0)))
        return original_rows(self, inputs, *args, **kwargs)

    original_functorch = private_training._per_sample_grads

    def spy_functorch(wrapper, params, inputs, *args):
        seen.append(int(inputs.size(0)))
        return original_functorch(wrapper, params, inputs, *args)

    monkeypatch.setattr(RowGatherStep, "clipped_sum", spy_rows)
    monkeypatch.setattr(private_training, "_per_sample_grads", spy_functorch)
    return seen


def _train(name: str, loss: str, mode: str, physical: int, lists: bool = False):
    """One DP round (2 local epochs, clipping active, weight decay so the gradient's scale matters)."""
    if name == "solid":
        model = solid_model()
    else:
        torch.manual_seed(0)
        model = build_srm(name, NUM_ITEMS, hidden_size=8, dropout=0.0)
    privacy = PrivacySettings(
        mode="local",
        noise_multiplier=0.7,
        clipping_norm=0.2,
        grad_sample_mode=mode,
        physical_batch_size=physical,
    )
    train = replace(settings(loss, batch_size=BATCH), weight_decay=0.5)
    cloud = None
    if lists:
        inputs, targets, hard = _lists(40, seed=9)
        cloud = CloudListPass(inputs, targets, hard, random_negatives=6, epochs=1)
    result = train_on_shard_private(
        model, sequences(40, seed=12), train, privacy, 10, 2, 2, 40, seed=4, cloud_lists=cloud
    )
    return model.state_dict(), result


@pytest.mark.parametrize(
    ("name", "loss", "mode", "lists"),
    [
        ("sasrec", "sampled_softmax", "rows", False),
        ("gru4rec", "bce", "rows", False),
        ("sasrec", "sampled_softmax", "hooks", False),
        ("sasrec", "ce", "functorch", False),
        ("ttt4rec", "ce", "functorch", False),
        # SOLID with the text part and the pass over the cloud's lists (the whole system's device round).
        ("solid", "ce", "functorch", True),
    ],
)
def test_chunked_batches_take_the_same_steps_as_whole_ones(
    name: str, loss: str, mode: str, lists: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole_state, whole = _train(name, loss, mode, physical=0, lists=lists)
    seen = _rows_seen(monkeypatch)
    chunked_state, chunked = _train(name, loss, mode, physical=CHUNK, lists=lists)
    # Hooks compute per-sample gradients inside Opacus (no spy there); the others show their chunks.
    if mode != "hooks":
        assert seen and max(seen) <= CHUNK
        assert sum(seen) > 2 * BATCH  # every example of every batch went through a chunk
    # The same ledger: one accountant step per Poisson batch, not per chunk.
    assert chunked.history == whole.history
    assert chunked.metrics["epsilon"] == whole.metrics["epsilon"]
    # Each example clipped alone either way; clipping is active, so a per-chunk clip would show here.
    assert chunked.metrics["clipped-fraction"] == pytest.approx(whole.metrics["clipped-fraction"])
    assert whole.metrics["clipped-fraction"] > 0
    assert chunked.metrics["train_loss"] == pytest.approx(whole.metrics["train_loss"], rel=1e-5)
    if lists:
        assert chunked.metrics["rerank-loss"] == pytest.approx(whole.metrics["rerank-loss"], rel=1e-5)
    # One noise draw and one step per batch: noise or steps per chunk would move the weights apart.
    for key, value in whole_state.items():
        torch.testing.assert_close(chunked_state[key], value, atol=2e-5, rtol=1e-4, msg=key)
