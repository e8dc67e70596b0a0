"""Local DP-SGD with the text part of the item vectors: the public part stays out of DP, ``P`` trains."""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import PATTERN_RUN, write_pattern_dataset, write_pattern_text
from test_privacy import NUM_ITEMS, assert_row_gather_equals_dense, padded, sequences, settings

from lsc4rec.client.private_training import _per_sample_grads, _RowLoss, train_on_shard_private
from lsc4rec.models.srm import build_srm
from lsc4rec.models.srm.losses import draw_negatives, per_sequence_loss
from lsc4rec.privacy import PrivacySettings
from lsc4rec.settings import SettingsError, federated_settings_from_overrides

TEXT_DIM = 16


def text_model(name: str = "sasrec", seed: int = 3) -> torch.nn.Module:
    """A small SRM whose item vectors carry a text part from random 'text' vectors (every item has text)."""
    from opacus.validators import ModuleValidator

    torch.manual_seed(seed)
    model = build_srm(name, NUM_ITEMS, hidden_size=8, dropout=0.0)
    model.attach_item_text(torch.randn(NUM_ITEMS + 1, TEXT_DIM))
    with torch.no_grad():
        # attach_item_text zeroes the id rows of items with text; give them values so both parts matter.
        model.item_embedding.weight[1:] = 0.1 * torch.randn(NUM_ITEMS, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModuleValidator.fix(model)


def _example_grads_by_autograd(
    wrapper: _RowLoss, names: list[str], inputs, targets, negatives
) -> dict[str, torch.Tensor]:
    """Each example's gradient by plain autograd on that example alone: ``{name: [B, ...]}``."""
    named = dict(wrapper.named_parameters())
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for b in range(inputs.size(0)):
        neg = None
        if negatives is not None:
            neg = negatives[b : b + 1] if negatives.dim() == 3 else negatives
        loss = wrapper(inputs[b : b + 1], targets[b : b + 1], neg).sum()
        grads = torch.autograd.grad(loss, [named[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads, strict=True):
            out[n].append(torch.zeros_like(named[n]) if g is None else g)
    return {n: torch.stack(gs) for n, gs in out.items()}


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
@pytest.mark.parametrize("name", ["sasrec", "ttt4rec"])
@pytest.mark.parametrize("frozen_table", [False, True])
def test_row_gather_with_the_text_part_equals_per_example_autograd(
    name: str, loss: str, frozen_table: bool
) -> None:
    """Per-example gradients (projection P, encoder, id rows): the whole-model ``torch.func`` engine equals
    each example's own backward (in float64, where TTT's inner loop rounds alike both ways), and the
    row-gather engine's norms and clipped sums equal the whole-model engine's."""
    model = text_model(name)
    if frozen_table:
        model.item_embedding.weight.requires_grad_(False)
    inputs, targets = padded(sequences(7, seed=11, low=2, high=14))
    negatives = draw_negatives(
        loss, NUM_ITEMS, targets, 12 if loss == "sampled_softmax" else 3, torch.Generator().manual_seed(1)
    )
    wrapper = _RowLoss(model, loss)
    names = [n for n, p in wrapper.named_parameters() if p.requires_grad]
    assert "model.item_text.projection.weight" in names
    assert ("model.item_embedding.weight" in names) != frozen_table

    exact = copy.deepcopy(wrapper).double()
    exact_values = {n: p.detach() for n, p in exact.named_parameters() if n in names}
    by_autograd = _example_grads_by_autograd(exact, names, inputs, targets, negatives)
    by_func = _per_sample_grads(exact, exact_values, inputs, targets, negatives)
    for n in names:
        torch.testing.assert_close(by_func[n], by_autograd[n], atol=1e-12, rtol=1e-9, msg=n)
    # The projection's share of each example's gradient is real, not a zero carried along.
    assert float(by_autograd["model.item_text.projection.weight"].abs().sum()) > 0

    assert_row_gather_equals_dense(wrapper, names, inputs, targets, negatives)


@pytest.mark.parametrize("mode", ["rows", "functorch"])
def test_frozen_id_rows_get_no_gradient_and_no_noise_while_p_and_the_encoder_train(mode: str) -> None:
    """DP on the private part only: the id table (public knowledge from the cloud) leaves the round
    bit-identical, while P and the encoder move; the text vectors are no parameter at all."""
    model = text_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    privacy = PrivacySettings(
        mode="local", noise_multiplier=1.0, freeze_item_embeddings=True, grad_sample_mode=mode
    )
    result = train_on_shard_private(
        model, sequences(32, seed=9), settings("bce"), privacy, 10, 1, 1, 32, seed=2
    )
    assert result.trained and result.metrics["epsilon"] > 0
    assert torch.equal(model.item_embedding.weight, before["item_embedding.weight"])
    assert model.item_embedding.weight.grad is None
    assert model.item_embedding.weight.requires_grad  # frozen only while training privately
    assert "item_text.vectors" not in model.state_dict()
    assert not torch.equal(model.item_text.projection.weight, before["item_text.projection.weight"])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(before) - {"item_embedding.weight"}


def test_the_noise_lands_on_what_trains_only() -> None:
    """With the clipping norm tiny, a step is noise: the projection moves by it, the frozen id rows do not."""
    model = text_model()
    before = model.item_text.projection.weight.detach().clone()
    table = model.item_embedding.weight.detach().clone()
    privacy = PrivacySettings(
        mode="local", noise_multiplier=5.0, clipping_norm=1e-6, freeze_item_embeddings=True,
        grad_sample_mode="rows",
    )  # fmt: skip
    sgd = replace(settings("bce", batch_size=32), optimizer="sgd", lr=1.0)
    train_on_shard_private(model, sequences(32, seed=9), sgd, privacy, 10, 1, 1, 32, seed=2)
    moved = model.item_text.projection.weight.detach() - before
    # One step of SGD at lr 1: the update is the noise, std = sigma * C / expected batch per coordinate.
    expected_std = 5.0 * 1e-6 / 32
    assert 0.7 * expected_std < float(moved.std()) < 1.3 * expected_std
    assert torch.equal(model.item_embedding.weight, table)


def test_per_sample_loss_with_the_text_part_reads_the_text() -> None:
    """Sanity of the fixture: changing an item's text vector changes the losses that read that item."""
    model = text_model()
    inputs, targets = padded(sequences(4, seed=1))
    negatives = draw_negatives("bce", NUM_ITEMS, targets, 3, torch.Generator().manual_seed(0))
    first = per_sequence_loss("bce", model, inputs, targets, negatives).detach()
    with torch.no_grad():
        model.item_text.vectors[int(targets[0, -1])] += 3.0
    assert not torch.allclose(per_sequence_loss("bce", model, inputs, targets, negatives), first)


def test_hooks_refuse_the_text_part_and_rows_refuse_untrained_items() -> None:
    model = text_model()
    hooks = PrivacySettings(mode="local", noise_multiplier=1.0, grad_sample_mode="hooks")
    with pytest.raises(ValueError, match="the text part's projection"):
        train_on_shard_private(model, sequences(8), settings("bce"), hooks, 10, 1, 1, 8, seed=0)
    model.set_trained_items(torch.arange(1, NUM_ITEMS // 2))
    rows = PrivacySettings(mode="local", noise_multiplier=1.0, grad_sample_mode="rows")
    with pytest.raises(ValueError, match=r"marked untrained in the text part.*functorch"):
        train_on_shard_private(model, sequences(8), settings("bce"), rows, 10, 1, 1, 8, seed=0)


def test_a_local_dp_run_with_the_text_part_is_accepted_except_with_hooks() -> None:
    base = ["system=base", "model=sasrec_device", "model.item_text=projected", "privacy.mode=local",
            "privacy.noise_multiplier=1.0"]  # fmt: skip
    run = federated_settings_from_overrides(base)
    assert run.model.item_text == "projected" and run.privacy.mode == "local"
    with pytest.raises(SettingsError, match=r"item_text with privacy\.grad_sample_mode=hooks"):
        federated_settings_from_overrides([*base, "privacy.grad_sample_mode=hooks"])


@pytest.mark.slow
def test_privacy_sweep_with_the_text_part_keeps_the_public_rows_out_of_dp(tmp_path: Path) -> None:
    """The sweep on a dataset with item text: the private-part setting's last model carries the warm
    start's id rows unchanged (up to the aggregation's rounding) and a trained projection; today's engine
    moves both."""
    import subprocess
    import sys

    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=120, num_items=NUM_ITEMS)
    write_pattern_text(data, NUM_ITEMS)
    command = [
        sys.executable, "-m", "lsc4rec.simulations.privacy_sweep", *PATTERN_RUN, f"data.path={data}",
        "model.hidden_size=8", "model.item_text=projected", "federated.rounds=2",
        "federated.warm_start_epochs=2",
        "collab.cloud_users=0.5", "sweep.setting=[]", "sweep.modes=[local]", "sweep.epsilons=[8]",
        "sweep.ablations=['private-part privacy.freeze_item_embeddings=true']",
        "sweep.local_overrides=['train.loss=bce']", f"output_dir={tmp_path}", "run_name=sweep", "threads=1",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    names = [row["name"] for row in result["settings"]]
    assert names == ["non-private", "local-eps8", "local-eps8-private-part"]
    assert all(7.9 < row["epsilon"] <= 8.0 for row in result["settings"][1:])

    def state(name: str) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / "sweep" / name, map_location="cpu", weights_only=True)

    start = state("warm_start.pt")
    assert "item_text.projection.weight" in start and "item_text.vectors" not in start
    private = state("local-eps8-private-part/model_last.pt")
    everything = state("local-eps8/model_last.pt")
    table, projection = "item_embedding.weight", "item_text.projection.weight"
    torch.testing.assert_close(private[table], start[table], atol=1e-6, rtol=0)
    assert float((private[projection] - start[projection]).abs().max()) > 1e-3
    assert float((everything[table] - start[table]).abs().max()) > 1e-3


@pytest.mark.usefixtures("task_identity")
def test_a_node_builds_its_model_from_the_message_without_the_text_projection_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nodes rebuild the SRM every round and load the global weights over it: the projection's start (an SVD
    of the catalogue's vectors, ~0.7 s on Beauty) is skipped there, and the loaded model is the sender's."""
    from flwr.app import ArrayRecord, Message, RecordDict

    import lsc4rec.models.srm.text_part as text_part
    from lsc4rec.client.node import model_from_message

    run = federated_settings_from_overrides(
        ["system=base", "model=sasrec_device", "model.item_text=projected"]
    )
    vectors = torch.randn(NUM_ITEMS + 1, TEXT_DIM)
    torch.manual_seed(0)
    from lsc4rec.training import build_model_from_config

    sender = build_model_from_config(run.model, NUM_ITEMS, run.data.max_len, vectors)
    message = Message(
        RecordDict({"arrays": ArrayRecord(sender.state_dict())}), dst_node_id=1, message_type="train"
    )

    def no_svd(*args, **kwargs):
        raise AssertionError("the projection's start was computed for weights about to be replaced")

    monkeypatch.setattr(text_part, "principal_projection", no_svd)
    received = model_from_message(message, run, NUM_ITEMS, vectors)
    for key, value in sender.state_dict().items():
        assert torch.equal(received.state_dict()[key], value), key
    inputs, _ = padded(sequences(3, seed=2))
    assert torch.equal(received.eval().score_all(inputs), sender.eval().score_all(inputs))


@pytest.mark.slow
def test_privacy_sweep_runs_solid_with_the_semantic_ids_its_runs_tested(tmp_path: Path) -> None:
    """The sweep on SOLID (the whole system's device model family): its warm start and initial model are
    labelled with the codebook's version 0, and each setting's last model is scored again with the semantic
    ids its run saved, so a setting's "all" slice is the NDCG@10 its run reported."""
    import subprocess
    import sys

    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=120, num_items=NUM_ITEMS)
    write_pattern_text(data, NUM_ITEMS)
    command = [
        sys.executable, "-m", "lsc4rec.simulations.privacy_sweep", *PATTERN_RUN, f"data.path={data}",
        "model=solid", "model.hidden_size=8", "model.item_text=projected", "model.semantic_scores=true",
        "solid.features=[text]", "solid.codebook_sizes=[4,2]", "federated.rounds=2",
        "federated.warm_start_epochs=2", "collab.cloud_users=0.5", "sweep.setting=[]", "sweep.modes=[local]",
        "sweep.epsilons=[8]", "sweep.ablations=['private-part privacy.freeze_item_embeddings=true']",
        "sweep.local_overrides=['train.loss=bce']", f"output_dir={tmp_path}", "run_name=sweep", "threads=1",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["model"] == "solid" and result["warm_start"]["epochs"] == 2
    slices = result["slices_NDCG@10"]
    for row in result["settings"]:
        assert (tmp_path / "sweep" / row["name"] / "model_last.semantic_ids.pt").is_file()
        assert slices[row["name"]]["all"] == pytest.approx(row["NDCG@10"], abs=1e-4)
    assert slices["initial"]["all"] == pytest.approx(result["initial_NDCG@10"], abs=1e-4)
