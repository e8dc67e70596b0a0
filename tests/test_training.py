"""Training-loop settings: optimizer construction, plateau learning-rate decay, bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lsc4rec.config import compose_config
from lsc4rec.data import RawDataset, TrainBatches, leave_one_out
from lsc4rec.models.srm import build_srm
from lsc4rec.training import EvalSet, TrainSettings, build_eval_sets, fit, train_epochs

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


def test_sgd_with_momentum_and_its_refusals() -> None:
    settings = TrainSettings(optimizer="sgd", momentum=0.9, lr=0.5, weight_decay=0.01)
    optimizer = settings.make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9 and optimizer.param_groups[0]["lr"] == 0.5
    assert isinstance(TrainSettings().make_optimizer([torch.nn.Parameter(torch.zeros(2))]), torch.optim.Adam)
    with pytest.raises(ValueError, match=r"train\.momentum=0\.9 applies to train\.optimizer=sgd only"):
        TrainSettings(momentum=0.9)


@pytest.mark.parametrize(
    ("field", "value"),
    [("adam_beta2", 1.0), ("lr_decay", 0.0), ("lr_decay", 1.5), ("lr_decay_patience", -1),
     ("optimizer", "rmsprop"), ("momentum", 1.0)],
)  # fmt: skip
def test_bad_settings_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"train.{field}"):
        TrainSettings(**{field: value})


@pytest.mark.parametrize(
    ("name", "message"),
    [("gpu", "is not a device"), ("tpu:0", "is not a device"), ("meta", "unsupported device type")],
)
def test_bad_device_names_the_field(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"train.device='{name}'.*{message}"):
        TrainSettings(device=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_on_a_machine_without_it_says_so() -> None:
    with pytest.raises(ValueError, match=r"train.device='cuda' but this machine has no CUDA device"):
        TrainSettings(device="cuda")


def test_auto_device_is_cuda_exactly_when_cuda_is_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert TrainSettings(device="auto").resolve_device().type == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_matches_cpu_training_and_returns_the_model_home() -> None:
    """The same seeds on CUDA and CPU reach the same validation metric (float noise only)."""
    results = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = build_srm("sasrec", NUM_ITEMS, hidden_size=16, num_blocks=1, num_heads=1, dropout=0.0)
        train, valid = _data()
        settings = TrainSettings(epochs=3, patience=10, progress=False, device=device)
        result = fit(model, train, valid, settings)
        assert next(model.parameters()).device.type == "cpu"
        assert all(v.device.type == "cpu" for v in result.best_state.values())
        results[device] = [row["train_loss"] for row in result.history]
    assert results["cuda"] == pytest.approx(results["cpu"], rel=1e-3)


def test_train_epochs_runs_exactly_and_replays_learning_rates() -> None:
    torch.manual_seed(0)
    model = build_srm("gru4rec", NUM_ITEMS, hidden_size=8, dropout=0.0)
    train, _ = _data()
    before = [p.detach().clone() for p in model.parameters()]
    history = train_epochs(model, train, TrainSettings(progress=False), 2, learning_rates=[0.0, 0.0])
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    train_epochs(model, train, TrainSettings(progress=False), 1)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(ValueError, match="1 learning rates given for 2 epochs"):
        train_epochs(model, train, TrainSettings(progress=False), 2, learning_rates=[0.1])


def test_eval_sets_follow_the_validation_users() -> None:
    raw = RawDataset(
        "ten", Path("ten.txt"), list(range(10)), [[u + 1, u + 2, u + 3, u + 4] for u in range(10)]
    )
    split = leave_one_out(raw)
    cfg = compose_config(["eval.validation_users=3", "eval.sampled_negatives=5"])
    with pytest.raises(
        ValueError, match=r"eval\.validation_users=3 is honoured by the centralized baseline only"
    ):
        build_eval_sets(split, cfg.eval, 8)
    restricted = split.with_validation_users(3, seed=0)
    valid, test = build_eval_sets(restricted, cfg.eval, 8)
    expected = sorted(split.valid_targets[u] for u in restricted.validation_rows())
    assert sorted(int(t) for batch in valid.batches for t in batch.targets) == expected
    assert len(test.negatives) == 10
