"""MergeNet: the adapter, low-rank factors, parameter pairing, the transfer cycle, KD, and the experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_pattern_dataset, write_pattern_text
from torch import Tensor, nn

from lsc4rec.config import compose_config
from lsc4rec.data import TrainBatches
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.models.mergenet import (
    Distillation,
    ListDistillation,
    MergeNetTransfer,
    ParameterAdapter,
    ParameterSlice,
    SourceTraining,
    low_rank_factors,
    resolve_slice,
)
from lsc4rec.models.srm import SASRec
from lsc4rec.simulations.mergenet import run_mergenet
from lsc4rec.training import TrainSettings, train_one_epoch

NUM_ITEMS = 20


def tiny_models() -> tuple[SASRec, CloudLLM]:
    torch.manual_seed(0)
    srm = SASRec(NUM_ITEMS, hidden_size=8, num_blocks=1, num_heads=2, dropout=0.0, max_len=6)
    llm = CloudLLM.from_scratch(
        NUM_ITEMS, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_len=6
    )
    return srm, llm


def test_low_rank_factors_reconstruct_a_low_rank_matrix() -> None:
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(30, 3, generator=generator) @ torch.randn(3, 12, generator=generator)
    u, v = low_rank_factors(matrix, 3)
    assert u.shape == (30, 3) and v.shape == (12, 3)
    assert torch.allclose(u @ v.t(), matrix, atol=1e-4)
    with pytest.raises(ValueError, match=r"mergenet\.rank must be in 1\.\.12"):
        low_rank_factors(matrix, 13)


def test_adapter_starts_as_identity_handles_other_shapes_and_reads_the_source() -> None:
    torch.manual_seed(0)
    adapter = ParameterAdapter((20, 8), (20, 16), num_layers=2, attention_dim=16, heads=2, dropout=0.0)
    target = torch.randn(20, 8)
    u, v = low_rank_factors(torch.randn(20, 16), 4)
    assert torch.equal(adapter(target, u, v), target)
    # Once the output projection is non-zero, the output depends on the source factors, within the bound.
    torch.nn.init.normal_(adapter.out.weight, std=0.1)
    a = adapter(target, u, v)
    b = adapter(target, u * 2 + 1, v)
    assert a.shape == (20, 8) and not torch.allclose(a, b)
    bound = adapter.max_change * target.pow(2).mean().sqrt()
    assert float((a - target).abs().max()) <= float(bound) + 1e-6
    with pytest.raises(ValueError, match=r"built for a \(20, 8\) target"):
        adapter(torch.randn(19, 8), u, v)
    with pytest.raises(ValueError, match="source factors must be"):
        adapter(target, u[:5], v)


def test_aligned_adapter_reads_each_rows_own_source_row() -> None:
    torch.manual_seed(0)
    generic = ParameterAdapter((500, 8), (500, 16), attention_dim=16, heads=2, dropout=0.0)
    adapter = ParameterAdapter((500, 8), (500, 16), attention_dim=16, heads=2, dropout=0.0, aligned=True)
    # The catalogue-wide column projections are what the aligned adapter leaves out.
    assert sum(p.numel() for p in adapter.parameters()) < 0.1 * sum(p.numel() for p in generic.parameters())
    target = torch.randn(500, 8)
    u, v = low_rank_factors(torch.randn(500, 16), 4)
    assert torch.equal(adapter(target, u, v), target)
    torch.nn.init.normal_(adapter.out.weight, std=0.1)
    base = adapter(target, u, v)
    # Swapping two items' source rows (the factors' scale stays) changes those two output rows only. Eval
    # mode: in training mode spectral norm takes a power-iteration step per call, changing every row.
    adapter.eval()
    base = adapter(target, u, v)
    swapped = u.clone()
    swapped[[7, 9]] = u[[9, 7]]
    changed = adapter(target, swapped, v)
    rows = (changed - base).abs().amax(dim=1) > 1e-7
    assert rows.nonzero().flatten().tolist() == [7, 9]
    with pytest.raises(ValueError, match="as many source rows as target rows"):
        ParameterAdapter((500, 8), (400, 16), aligned=True)


def test_row_component_attention_equals_attention_over_explicit_components() -> None:
    from lsc4rec.models.mergenet.adapter import _RowComponentAttention

    torch.manual_seed(0)
    attention = _RowComponentAttention(8, 12, 16, 4, 0.0)
    x, u, v = torch.randn(30, 8), torch.randn(30, 5), torch.randn(12, 5)
    components = u.unsqueeze(-1) * v.t().unsqueeze(0)  # [rows, r, q]: u[i, k] * v[:, k]
    keys = attention.key(components).view(30, 5, 4, 4).transpose(1, 2)
    values = attention.value(components).view(30, 5, 4, 4).transpose(1, 2)
    queries = attention.query(x).view(30, 4, 1, 4)
    weights = torch.softmax(queries @ keys.transpose(-1, -2) / 2.0, dim=-1)
    expected = attention.out((weights @ values).reshape(30, 16))
    torch.testing.assert_close(attention(x, u, v), expected, atol=1e-5, rtol=1e-5)


def test_item_tables_pair_row_aligned_by_default() -> None:
    srm, llm = tiny_models()
    items = MergeNetTransfer(
        resolve_slice("srm.item_embeddings", srm, llm), resolve_slice("llm.item_embeddings", srm, llm), rank=4
    )
    other = MergeNetTransfer(
        resolve_slice("srm:blocks.0.ffn.net.0.weight", srm, llm),
        resolve_slice("llm.item_embeddings", srm, llm),
        rank=4,
    )
    assert items.adapter.aligned and not other.adapter.aligned
    with pytest.raises(ValueError, match=r"mergenet\.aligned"):
        MergeNetTransfer(
            resolve_slice("srm.item_embeddings", srm, llm),
            resolve_slice("llm.item_embeddings", srm, llm),
            aligned="yes",
        )


def toy_transfer(signal: str) -> tuple[Tensor, nn.Parameter, Tensor, MergeNetTransfer]:
    """A 12 x 6 target starting at ``start``, a goal ``W*`` a whole RMS away, and a transfer into it."""
    torch.manual_seed(0)
    start = torch.randn(12, 6)
    target = torch.nn.Parameter(start.clone())
    source = torch.nn.Parameter(torch.randn(12, 10))
    goal = start + torch.randn(12, 6)
    transfer = MergeNetTransfer(
        ParameterSlice(target, None, "t"),
        ParameterSlice(source, None, "s"),
        rank=4,
        t_cycle=1,
        attention_dim=16,
        heads=2,
        dropout=0.0,
        lr=1e-2,
        # The goal is a whole RMS away from the start: allow corrections that large.
        max_change=3.0,
        signal=signal,
    )
    return start, target, goal, transfer


@pytest.mark.slow
def test_the_adapter_learns_from_the_targets_post_step_parameters() -> None:
    # Each cycle starts from the same target T; the "task step" after a transfer moves the parameters 20%
    # towards W*. The rule 1/2||theta' - theta_after||^2 must teach the adapter to propose W* itself.
    start, target, goal, transfer = toy_transfer("step")
    distances = []
    for _ in range(200):
        proposal = transfer.transfer()
        distances.append(float((proposal.detach() - goal).norm()))
        with torch.no_grad():
            target -= 0.2 * (target - goal)
        transfer.learn(proposal)
        with torch.no_grad():
            target.copy_(start)
    # 7.8 -> 1.8 here: the adapter's correction is a linear map of LayerNormed 6-d rows, which cannot hit an
    # arbitrary 12 x 6 goal exactly; without learning the distance would stay at 7.8.
    assert distances[-1] < 0.3 * distances[0], (distances[0], distances[-1])
    assert distances[-1] < min(distances[:10])
    assert transfer.stats.transfers == 200


@pytest.mark.slow
def test_the_gradient_signal_descends_the_targets_loss_through_the_adapter() -> None:
    # Task loss L(theta) = 1/2||theta - W*||^2 evaluated at the transferred parameters: its gradient at theta'
    # (left in .grad, as a training step leaves it) must teach the adapter to propose W*; a step that leaves
    # no gradient teaches nothing.
    start, target, goal, transfer = toy_transfer("gradient")
    assert transfer.signal == "gradient"
    target.grad = None
    before = [p.detach().clone() for p in transfer.adapter.parameters()]
    assert transfer.learn(transfer.transfer()) == 0.0
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, transfer.adapter.parameters(), strict=True))
    losses = []
    for _ in range(200):
        target.data.copy_(start)
        proposal = transfer.transfer()
        losses.append(0.5 * float((proposal.detach() - goal).pow(2).sum()))
        target.grad = target.detach() - goal
        transfer.learn(proposal)
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    with pytest.raises(ValueError, match=r"mergenet\.signal"):
        MergeNetTransfer(ParameterSlice(target, None, "t"), transfer.source, signal="x")


def test_slices_name_item_rows_and_write_only_them() -> None:
    srm, llm = tiny_models()
    srm_rows = resolve_slice("srm.item_embeddings", srm, llm)
    llm_rows = resolve_slice("llm.item_embeddings", srm, llm)
    assert srm_rows.shape == (NUM_ITEMS, 8) and llm_rows.shape == (NUM_ITEMS, 16)
    table = llm.lm.get_input_embeddings().weight
    specials = table[:3].detach().clone()
    llm_rows.assign(torch.zeros(NUM_ITEMS, 16))
    assert torch.equal(table[:3], specials) and float(table[3:].detach().abs().sum()) == 0.0
    assert resolve_slice("srm:blocks.0.ffn.net.0.weight", srm, llm).shape == (8, 8)
    with pytest.raises(ValueError, match="has no parameter 'nope'"):
        resolve_slice("srm:nope", srm, llm)
    with pytest.raises(ValueError, match="MergeNet pairs matrices"):
        resolve_slice("srm:blocks.0.ffn.net.0.bias", srm, llm)
    with pytest.raises(ValueError, match=r"use llm\.item_embeddings"):
        resolve_slice("somewhere", srm, llm)


def test_hooks_run_inside_training_transfer_kd_and_source_steps() -> None:
    srm, llm = tiny_models()
    sequences = [[(s + i) % NUM_ITEMS + 1 for i in range(6)] for s in range(40)]
    batches = TrainBatches(sequences, 6, 8, seed=0)
    settings = TrainSettings(epochs=1, batch_size=8, progress=False)
    transfer = MergeNetTransfer(
        resolve_slice("srm.item_embeddings", srm, llm),
        resolve_slice("llm.item_embeddings", srm, llm),
        rank=4,
        t_cycle=2,
        attention_dim=16,
        heads=2,
    )
    source = SourceTraining(llm, sequences, seed=0)
    llm_before = llm.lm.get_input_embeddings().weight.detach().clone()
    optimizer = settings.make_optimizer(srm.parameters())
    train_one_epoch(
        srm, batches, optimizer, settings, torch.Generator().manual_seed(0), hooks=[transfer, source]
    )
    steps = len(list(batches))
    assert (
        transfer.stats.transfers == (steps + 1) // 2
        and len(transfer.stats.adapter_losses) == transfer.stats.transfers
    )
    assert source.steps == steps and not torch.equal(llm.lm.get_input_embeddings().weight, llm_before)
    # KD: the term is positive for different models and zero against itself-like teacher logits.
    kd = Distillation(llm, weight=1.0, temperature=2.0)
    inputs, targets = next(iter(batches))
    loss = kd.extra_loss(srm, inputs, targets)
    assert loss is not None and float(loss) > 0 and loss.requires_grad
    with pytest.raises(ValueError, match="temperature > 0"):
        Distillation(llm, temperature=0.0)
    # List KD reads only the LLM's top-k items per position and their scores: with k = the catalogue it is
    # the full KD term; with a short list it differs, and it still trains the SRM.
    full_list = ListDistillation(llm, k=NUM_ITEMS, weight=1.0, temperature=2.0)
    assert float(full_list.extra_loss(srm, inputs, targets)) == pytest.approx(float(loss), rel=1e-4)
    short = ListDistillation(llm, k=3, weight=1.0, temperature=2.0).extra_loss(srm, inputs, targets)
    assert short is not None and short.requires_grad and float(short) != pytest.approx(float(loss), rel=1e-3)
    with pytest.raises(ValueError, match="k >= 1"):
        ListDistillation(llm, k=0)


def test_the_kd_term_reaches_the_adapter_through_the_targets_gradient() -> None:
    # mergenet_kd: with a Distillation hook beside the transfer, the adapter's learning signal (the target's
    # gradient after the step) is that of task loss + KL, so the adapter moves differently than without it.
    def adapter_after_one_step(with_kd: bool) -> list[Tensor]:
        srm, llm = tiny_models()
        transfer = MergeNetTransfer(
            resolve_slice("srm.item_embeddings", srm, llm),
            resolve_slice("llm.item_embeddings", srm, llm),
            rank=4,
            t_cycle=1,
            attention_dim=16,
            heads=2,
            dropout=0.0,
        )
        hooks: list = [transfer]
        if with_kd:
            hooks.append(Distillation(llm, weight=5.0, temperature=2.0))
        sequences = [[(s + i) % NUM_ITEMS + 1 for i in range(6)] for s in range(8)]
        batches = TrainBatches(sequences, 6, 8, seed=0)
        settings = TrainSettings(epochs=1, batch_size=8, progress=False)
        optimizer = settings.make_optimizer(srm.parameters())
        generator = torch.Generator().manual_seed(0)
        train_one_epoch(srm, batches, optimizer, settings, generator, hooks=hooks)
        assert transfer.stats.transfers == 1 and transfer.stats.adapter_losses[0] > 0
        return [p.detach().clone() for p in transfer.adapter.parameters()]

    plain, with_kd = adapter_after_one_step(False), adapter_after_one_step(True)
    assert any(not torch.allclose(a, b) for a, b in zip(plain, with_kd, strict=True))


@pytest.mark.slow
def test_mergenet_experiment_reports_every_variant(tmp_path: Path) -> None:
    data = write_pattern_dataset(tmp_path / "p.txt", num_users=150, num_items=30)
    write_pattern_text(data, 30)
    cfg = compose_config(
        [
            "data.name=p",
            f"data.path={data}",
            "data.max_len=8",
            "model.hidden_size=16",
            "model.dropout=0.1",
            "train.epochs=4",
            "train.lr=0.005",
            "train.batch_size=64",
            "train.progress=false",
            "eval.sampled_negatives=10",
            "llm.hidden_size=32",
            "llm.num_layers=1",
            "llm.num_heads=2",
            "llm.intermediate_size=64",
            "llm.max_len=8",
            "llm.train.epochs=3",
            "llm.train.lr=0.005",
            "llm.train.progress=false",
            "mergenet.rank=4",
            "mergenet.attention_dim=16",
            "mergenet.llm_finetune_epochs=1",
            "mergenet.text_codes=[8,4]",
            # A sparse device: the SRM knows 60% of the users, the LLM all of them (stale).
            "mergenet.device_users=0.6",
        ],
        config_name="mergenet_run",
    )
    result = run_mergenet(cfg, tmp_path / "run")
    assert result["device_users"] == 90
    # The item text makes the LLM text-grounded (llm.item_init=auto), the source MergeNet and KD read.
    assert result["llm_item_init"] == "text"
    variants = {
        "srm",
        "text_srm",
        "llm_rows_srm",
        "mergenet",
        "mergenet_kd",
        "kd",
        "list_kd",
        "text_part",
        "text_part_kd",
        "text_part_list_kd",
        "text_part_codes",
    }
    assert set(result["cloud_to_device"]) == variants
    assert set(result["device_to_cloud"]) == {"llm_finetuned", "llm_mergenet"}
    # 5% of 30 items = 2 newest items, held out of device training.
    assert result["new_items"]["items"] == 2 and result["new_items"]["clock"] == "position"
    for variant in result["cloud_to_device"].values():
        assert {"all", "rare_targets", "cold_users", "warm_users", "new_items"} <= set(variant)
        assert variant["all"]["users"] == 90
    # Equal-cost points exist for every variant but the reference itself.
    assert set(result["equal_epochs"]) == set(result["equal_seconds"]) == variants - {"srm"}
    # The walk is learnable: random ranking of 30 items would give HR@10 ~ 0.33.
    assert result["cloud_to_device"]["srm"]["all"]["HR@10"] > 0.8
    assert result["overhead"]["transfers"] > 0 and result["overhead"]["adapter_parameters"] > 0
    assert all(cost["parameters"] > 0 and cost["seconds_per_epoch"] > 0 for cost in result["cost"].values())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["runs"]["mergenet"]["transfer"]["transfers"] > 0
    # The KD-trained adapter transferred too (its signal, the target's gradient, carries the KL term).
    assert metrics["runs"]["mergenet_kd"]["transfer"]["transfers"] > 0
    # The compact carrier: 8 + 4 float16 centroids of the text vectors and 2 bytes per item, fewer bytes.
    carrier = metrics["runs"]["text_part_codes"]["carrier"]
    assert carrier["sizes"] == [8, 4] and carrier["bytes"] < carrier["bytes_float16_matrix"]
    assert metrics["runs"]["text_srm"]["text_init"]["items_from_text"] == 30
    assert (tmp_path / "run" / "mergenet.png").stat().st_size > 1000


def test_server_transfers_llm_knowledge_into_the_global_srm_each_round(tmp_path: Path) -> None:
    from lsc4rec.server.federated_run import run_federated
    from lsc4rec.settings import federated_settings_from_run_config
    from lsc4rec.simulations.launch.inprocess import InProcessGrid

    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=120, num_items=30)
    overrides = " ".join(
        [
            "system=base",
            "data.name=pattern",
            f"data.path={data}",
            "data.max_len=10",
            "eval.sampled_negatives=10",
            "train.lr=0.005",
            "train.progress=false",
            "model.dropout=0.1",
            "federated.rounds=3",
            "collab.enabled=true",
            "collab.candidates=10",
            "llm.max_len=10",
            "llm.hidden_size=32",
            "llm.intermediate_size=64",
            "llm.num_layers=1",
            "llm.num_heads=2",
            "llm.train.epochs=3",
            "llm.train.progress=false",
            "mergenet.every_rounds=2",
            "mergenet.rank=4",
            "mergenet.attention_dim=16",
        ]
    )
    run_config = {"overrides": overrides, "output-dir": str(tmp_path)}
    summary = run_federated(
        InProcessGrid(2, run_config), federated_settings_from_run_config(run_config), tmp_path / "run"
    )
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    # Rounds 1 and 3 transfer (every 2 rounds); round 1's aggregate teaches the adapter.
    assert [("mergenet" in row) for row in rows] == [True, False, True]
    assert rows[0]["mergenet"]["mergenet-extra-bytes"] == 0 and rows[0]["mergenet"]["mergenet-seconds"] > 0
    assert rows[0]["mergenet"]["mergenet-adapter-loss"] > 0
    assert summary["failures"] == 0
    with pytest.raises(ValueError, match=r"needs collab\.enabled=true"):
        run_config = {"overrides": f"system=base data.name=pattern data.path={data} mergenet.every_rounds=1"}
        run_federated(
            InProcessGrid(1, run_config), federated_settings_from_run_config(run_config), tmp_path / "bad"
        )


def test_device_users_is_a_seeded_subset_with_its_own_data() -> None:
    from lsc4rec.data import leave_one_out
    from lsc4rec.data.readers import RawDataset
    from lsc4rec.simulations.transfer_study import device_users

    sequences = [[u + 1, u + 2, u + 3, u + 4] for u in range(10)]
    split = leave_one_out(RawDataset("toy", Path("toy"), [100 + u for u in range(10)], sequences))
    assert device_users(split, 1.0, seed=0) is split
    part = device_users(split, 0.3, seed=0)
    assert part is not None and len(part.train) == 3 and part.num_items == split.num_items
    assert part == device_users(split, 0.3, seed=0)
    for row, user in enumerate(part.user_map.raw_ids):
        source = user - 100
        assert part.train[row] == split.train[source]
        assert part.test_targets[row] == split.test_targets[source]
    with pytest.raises(ValueError, match=r"mergenet\.device_users"):
        device_users(split, 0.0, seed=0, key="mergenet.device_users")
    with pytest.raises(ValueError, match=r"outside 0\.\.9"):
        split.subset([3, 10])


def test_kd_with_a_shorter_teacher_window_is_refused_before_training(tmp_path: Path) -> None:
    data = write_pattern_dataset(tmp_path / "p.txt", num_users=40, num_items=30)
    cfg = compose_config(
        ["data.name=p", f"data.path={data}", "data.max_len=10", "llm.max_len=5", "eval.sampled_negatives=3"],
        config_name="mergenet_run",
    )
    with pytest.raises(ValueError, match=r"llm\.max_len\) and the SRM 10 \(data\.max_len\)"):
        run_mergenet(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "llm").exists()
