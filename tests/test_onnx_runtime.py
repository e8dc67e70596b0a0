"""ONNX export of every SRM and ONNX Runtime scoring: parity with PyTorch, dynamic shapes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lsc4rec.client.onnx_runtime import (
    OnnxModelError,
    OnnxRecommender,
    OnnxScorer,
    export_srm,
    update_weights,
)
from lsc4rec.models.srm import DIN, GRU4Rec, SASRec, SequentialRecommender, TTT4Rec

NUM_ITEMS = 40
MAX_LEN = 12


def build(name: str) -> SequentialRecommender:
    torch.manual_seed(0)
    models = {
        "sasrec": lambda: SASRec(
            NUM_ITEMS, hidden_size=16, num_blocks=2, num_heads=2, dropout=0.0, max_len=MAX_LEN
        ),
        "gru4rec": lambda: GRU4Rec(NUM_ITEMS, hidden_size=16),
        "din": lambda: DIN(NUM_ITEMS, hidden_size=16),
        "ttt4rec": lambda: TTT4Rec(NUM_ITEMS, hidden_size=16, num_heads=2),
    }
    return models[name]().eval()


def histories(batch: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    history = torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=generator)
    for row in range(batch):
        history[row, : row % length] = 0  # every row its own amount of left padding
    return history


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "din", "ttt4rec"])
def test_candidate_scores_match_pytorch_over_shapes_and_padding(name: str, tmp_path: Path) -> None:
    model = build(name)
    path = export_srm(model, tmp_path / f"{name}.onnx", MAX_LEN, kind="candidates")
    scorer = OnnxScorer(path, num_items=NUM_ITEMS, kind="candidates")
    for batch, length, count, seed in [(1, 1, 1, 0), (3, 5, 7, 1), (6, MAX_LEN, 50, 2), (2, 9, 3, 3)]:
        history = histories(batch, length, seed)
        candidates = torch.randint(
            1, NUM_ITEMS + 1, (batch, count), generator=torch.Generator().manual_seed(seed)
        )
        candidates[0, 0] = 0  # a padding candidate scores -inf in both
        with torch.no_grad():
            expected = model.score_candidates(history, candidates).numpy()
        got = scorer.score_candidates(history.numpy(), candidates.numpy())
        assert got.shape == expected.shape
        assert np.isneginf(got[0, 0]) and np.isneginf(expected[0, 0])
        finite = np.isfinite(expected)
        np.testing.assert_allclose(got[finite], expected[finite], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sasrec", "ttt4rec"])
def test_full_ranking_graph_matches_pytorch(name: str, tmp_path: Path) -> None:
    model = build(name)
    scorer = OnnxScorer(export_srm(model, tmp_path / "all.onnx", MAX_LEN, kind="all"), kind="all")
    history = histories(4, 8, 5)
    with torch.no_grad():
        expected = model.score_all(history).numpy()
    got = scorer.score_all(history.numpy())
    assert got.shape == (4, NUM_ITEMS + 1) and np.isneginf(got[:, 0]).all()
    np.testing.assert_allclose(got[:, 1:], expected[:, 1:], atol=1e-4, rtol=1e-4)
    with pytest.raises(OnnxModelError, match="cannot score candidate lists"):
        scorer.score_candidates(history.numpy(), history.numpy())


def test_corrupt_and_mismatched_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    path = export_srm(build("sasrec"), tmp_path / "m.onnx", MAX_LEN)
    with pytest.raises(OnnxModelError, match="exported for 40 items, this catalogue has 41"):
        OnnxScorer(path, num_items=41)
    with pytest.raises(OnnxModelError, match="a 'candidates' graph, expected 'all'"):
        OnnxScorer(path, kind="all")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OnnxModelError, match=r"truncated\.onnx: not a loadable ONNX model"):
        OnnxScorer(truncated)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxScorer(tmp_path / "missing.onnx")
    with pytest.raises(OnnxModelError, match=r"providers \['NoSuchExecutionProvider'\] are not available"):
        OnnxScorer(path, providers=("NoSuchExecutionProvider", "CPUExecutionProvider"))
    assert OnnxScorer(path, providers=("CPUExecutionProvider",)).session.get_providers() == [
        "CPUExecutionProvider"
    ]
    scorer = OnnxScorer(path)
    with pytest.raises(ValueError, match=r"item id 99, outside 0\.\.40"):
        scorer.score_candidates(np.array([[1, 99]]), np.array([[1]]))
    with pytest.raises(ValueError, match="ONNX graph kind"):
        export_srm(build("sasrec"), tmp_path / "x.onnx", MAX_LEN, kind="everything")


@pytest.mark.slow
def test_devices_evaluate_through_onnx_runtime_with_the_same_metrics(tmp_path: Path) -> None:
    from conftest import write_pattern_dataset

    from lsc4rec.server.federated_run import run_federated
    from lsc4rec.settings import federated_settings_from_run_config
    from lsc4rec.simulations.launch.inprocess import InProcessGrid

    data = write_pattern_dataset(tmp_path / "p.txt", num_users=80, num_items=30)
    base = f"system=base data.name=p data.path={data} data.max_len=8 eval.sampled_negatives=10"
    base += " train.progress=false"
    base += " model.hidden_size=16 federated.rounds=2"
    client = {}
    for runtime in ("torch", "onnx"):
        run_config = {"overrides": f"{base} runtime={runtime}", "output-dir": str(tmp_path)}
        run_federated(
            InProcessGrid(2, run_config), federated_settings_from_run_config(run_config), tmp_path / runtime
        )
        rows = json.loads((tmp_path / runtime / "metrics.json").read_text())["rounds"]
        client[runtime] = [row["client_evaluate"] for row in rows]
    assert client["onnx"][0]["onnx-export-seconds"] > 0
    # Round 2 writes the new weights into the graph round 1 exported, instead of exporting again.
    assert client["onnx"][1]["onnx-weights-updated"] == 1.0
    for round_index in (0, 1):
        for key in ("client-NDCG@10", "client-HR@10", "client-MRR@10"):
            ours, reference = client["onnx"][round_index][key], client["torch"][round_index][key]
            assert ours == pytest.approx(reference, abs=1e-6), (round_index, key)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sasrec", "ttt4rec"])
def test_a_new_rounds_weights_go_into_the_graph_already_exported(name: str, tmp_path: Path) -> None:
    model = build(name)
    first, cost = OnnxRecommender.export_or_update(model, tmp_path, MAX_LEN, kinds=("all", "candidates"))
    assert cost["onnx-weights-updated"] == 0.0 and first.agrees_with(model, MAX_LEN)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    # The check has power: the graph of the old weights disagrees with the new model.
    assert not first.agrees_with(model, MAX_LEN)
    second, cost = OnnxRecommender.export_or_update(model, tmp_path, MAX_LEN, kinds=("all", "candidates"))
    assert cost["onnx-weights-updated"] == 1.0 and second.agrees_with(model, MAX_LEN)
    history = torch.tensor([[0, 0, 3, 4, 5]])
    expected = model.eval().score_all(torch.nn.functional.pad(history, (MAX_LEN - 5, 0)))
    finite = torch.isfinite(expected)
    assert torch.allclose(second.score_all(history)[finite], expected[finite], atol=1e-4)


@pytest.mark.slow
def test_a_graph_of_another_architecture_is_exported_afresh(tmp_path: Path) -> None:
    OnnxRecommender.export_or_update(build("sasrec"), tmp_path, MAX_LEN, kinds=("all",))
    other = SASRec(NUM_ITEMS + 5, hidden_size=16, num_blocks=2, num_heads=2, dropout=0.0, max_len=MAX_LEN)
    with pytest.raises(OnnxModelError, match="another architecture"):
        update_weights(tmp_path / "srm-all.onnx", other)
    recommender, cost = OnnxRecommender.export_or_update(other, tmp_path, MAX_LEN, kinds=("all",))
    assert cost["onnx-weights-updated"] == 0.0 and recommender.num_items == NUM_ITEMS + 5
    assert recommender.agrees_with(other, MAX_LEN)


@pytest.mark.slow
def test_the_full_ranking_graph_alone_also_scores_candidate_lists(tmp_path: Path) -> None:
    model = build("sasrec").eval()
    recommender, _ = OnnxRecommender.export_or_update(model, tmp_path, MAX_LEN, kinds=("all",))
    history = torch.nn.functional.pad(torch.tensor([[3, 4, 5], [7, 8, 9]]), (MAX_LEN - 3, 0))
    candidates = torch.tensor([[1, 6, 0, 12], [2, 0, 11, 3]])
    with torch.no_grad():
        expected = model.score_candidates(history, candidates.clamp(min=1))
    got = recommender.score_candidates(history, candidates)
    real = candidates > 0
    assert torch.allclose(got[real], expected[real], atol=1e-4)
    assert torch.isinf(got[~real]).all() and (got[~real] < 0).all()
