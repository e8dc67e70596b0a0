"""Training-loop settings: optimizer construction, plateau learning-rate decay, bad values named."""

from __future__ import annotations

import pytest
import torch

from lsc4rec.data import TrainBatches
from lsc4rec.models.srm import build_srm
from lsc4rec.training import EvalSet, TrainSettings, fit

NUM_ITEMS = 20


def _data() -> tuple[TrainBatches, EvalSet]:
    sequences = [[(u + t) % NUM_ITEMS + 1 for t in range(6)] for u in range(40)]
    train = TrainBatches([s[:-2] for s in sequences], max_len=8, batch_size=16, seed=0)
    valid = EvalSet.build("valid", [s[:-2] for s in sequences], [s[-2] for s in sequences], NUM_ITEMS, 8, 64)
    return train, valid


def test_plateau_decay_lowers_the_learning_rate_when_validation_stalls() -> None:
    torch.manual_seed(0)
    model = build_srm("gru4rec", NUM_ITEMS, hidden_size=8, dropout=0.0)
    train, valid = _data()
    # A vanishing learning rate keeps the validation metric flat, so every evaluation after the first stalls.
    settings = TrainSettings(
        lr=1e-12, epochs=4, patience=10, lr_decay=0.5, lr_decay_patience=0, progress=False
    )
    result = fit(model, train, valid, settings)
    lrs = [row["lr"] for row in result.history]
    assert lrs == pytest.approx([1e-12, 5e-13, 2.5e-13, 1.25e-13])


def test_constant_learning_rate_by_default_and_beta2_reaches_adam() -> None:
    settings = TrainSettings(adam_beta2=0.98)
    optimizer = settings.make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    assert settings.lr_decay == 1.0


@pytest.mark.parametrize(
    ("field", "value"), [("adam_beta2", 1.0), ("lr_decay", 0.0), ("lr_decay", 1.5), ("lr_decay_patience", -1)]
)
def test_bad_settings_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"train.{field}"):
        TrainSettings(**{field: value})
