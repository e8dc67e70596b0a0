"""LSC4Rec collaboration: score fusion, inconsistency scores, request calibration, collaborative training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_pattern_dataset

from lsc4rec.client.collab.fusion import fuse_scores, normalize_scores, rerank
from lsc4rec.client.collab.inference import (
    candidate_scores_from,
    catalogue_scores,
    device_top_items,
    drop_seen,
    seen_items,
    srm_candidate_scores,
    srm_catalogue_scores,
    union_candidates,
)
from lsc4rec.client.collab.request_model import FEATURE_NAMES, LearnedRequestModel
from lsc4rec.client.collab.request_policy import RequestPolicy, inconsistency
from lsc4rec.client.collab.serving import CollaborationSettings, serve_devices_in_modes
from lsc4rec.config import compose_config
from lsc4rec.data import pad_left
from lsc4rec.metrics import RankingAccumulator, list_ranks
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.models.srm import build_srm, candidate_rerank_loss
from lsc4rec.settings import REQUEST_CURVE_IGNORES, RequestCurveSettings, typed_run
from lsc4rec.simulations.request_curve import (
    FusionWeights,
    MomentLists,
    choose_fusion,
    compact_summary,
    run_request_curve,
)

ITEMS = torch.tensor([[5, 3, 9, 0], [1, 2, 4, 7]])
LLM = torch.tensor([[-1.0, -2.0, -3.0, float("-inf")], [-0.5, -0.6, -0.7, -0.8]])
SRM = torch.tensor([[0.1, 0.9, 0.5, float("-inf")], [4.0, 3.0, 2.0, 1.0]])


def test_normalisations_stay_within_the_valid_slots() -> None:
    valid = ITEMS > 0
    minmax = normalize_scores(LLM, valid, "minmax")
    assert minmax[0].tolist() == [1.0, 0.5, 0.0, 0.0]
    softmax = normalize_scores(SRM, valid, "softmax")
    assert torch.allclose(softmax.sum(dim=1), torch.ones(2)) and softmax[0, 3] == 0
    rank = normalize_scores(SRM, valid, "rank")
    assert rank[0].tolist() == [0.5, 1.0, 0.75, 0.0]
    z = normalize_scores(SRM, valid, "zscore")
    assert torch.allclose(z[1].mean(), torch.tensor(0.0), atol=1e-6)
    with pytest.raises(ValueError, match=r"collab\.normalization"):
        normalize_scores(LLM, valid, "l2")


def test_alpha_ends_are_the_single_models_and_empty_slots_stay_last() -> None:
    assert rerank(ITEMS, fuse_scores(LLM, SRM, ITEMS, 1.0)).tolist() == [[5, 3, 9, 0], [1, 2, 4, 7]]
    assert rerank(ITEMS, fuse_scores(LLM, SRM, ITEMS, 0.0)).tolist() == [[3, 9, 5, 0], [1, 2, 4, 7]]
    # alpha 0.5, minmax: row 0 -> 5: 0.5 * 1 + 0.5 * 0 = 0.5, 3: 0.25 + 0.5 = 0.75, 9: 0 + 0.25 = 0.25
    fused = fuse_scores(LLM, SRM, ITEMS, 0.5)
    assert torch.allclose(fused[0, :3], torch.tensor([0.5, 0.75, 0.25]))
    assert fused[0, 3] == float("-inf")
    with pytest.raises(ValueError, match=r"collab\.alpha"):
        fuse_scores(LLM, SRM, ITEMS, 1.5)


def test_drop_seen_removes_consumed_items_only() -> None:
    assert drop_seen(ITEMS, torch.tensor([[0, 9, 3], [0, 0, 8]])).tolist() == [[5, 0, 0, 0], [1, 2, 4, 7]]


def test_inconsistency_scores() -> None:
    items = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 0, 0]])
    agree = torch.tensor([4.0, 3.0, 2.0, 1.0])
    srm = torch.stack([agree, agree.flip(0), torch.tensor([2.0, 1.0, float("-inf"), float("-inf")])])
    footrule = inconsistency(items, srm, "footrule")
    # Identical order -> 0; reversed order of 4 -> footrule 8 = floor(16 / 2) -> 1; empty slots count as n.
    assert footrule[0] == 0 and footrule[1] == 1.0 and footrule[2] == 1.0
    topk = inconsistency(items, srm, "topk", k=2)
    assert topk.tolist() == [0.0, 1.0, 0.0]
    coverage = inconsistency(
        items, srm, "coverage", k=2, srm_top_items=torch.tensor([[1, 9], [7, 8], [2, 1]])
    )
    assert coverage.tolist() == [0.5, 1.0, 0.0]
    with pytest.raises(ValueError, match="srm_top_items"):
        inconsistency(items, srm, "coverage")


def test_calibration_hits_the_ratio_even_with_tied_scores() -> None:
    # Discrete scores with heavy ties: 40% at 1.0, 40% at 0.5, 20% at 0.
    scores = torch.tensor([1.0] * 40 + [0.5] * 40 + [0.0] * 20)
    policy = RequestPolicy("intelligent", 0.6).calibrate(scores)
    assert policy.threshold == 0.5 and policy.tie_probability == pytest.approx(0.5)
    generator = torch.Generator().manual_seed(0)
    rates = [float(policy.decide(scores, generator).float().mean()) for _ in range(200)]
    assert sum(rates) / len(rates) == pytest.approx(0.6, abs=0.01)
    # Higher scores always request before lower ones.
    decided = policy.decide(scores, generator)
    assert decided[:40].all() and not decided[80:].any()
    assert not RequestPolicy("intelligent", 0.0).calibrate(scores).decide(scores, generator).any()
    assert RequestPolicy("always").decide(scores, generator).all()
    random_rate = RequestPolicy("random", 0.25).decide(torch.zeros(20000), generator).float().mean()
    assert float(random_rate) == pytest.approx(0.25, abs=0.02)
    with pytest.raises(ValueError, match=r"request\.mode"):
        RequestPolicy("sometimes")


def test_rerank_loss_is_cross_entropy_over_target_hard_and_random_candidates() -> None:
    torch.manual_seed(0)
    model = build_srm("gru4rec", 12, hidden_size=8, dropout=0.0)
    inputs = torch.tensor([[0, 1, 2], [3, 4, 5]])
    targets = torch.tensor([[0, 2, 3], [4, 5, 6]])
    # Row 1 position 2: the LLM's candidates include the target itself (6), which must not count as negative.
    hard = torch.tensor([[[0, 0], [7, 8], [9, 10]], [[1, 2], [3, 11], [6, 12]]])
    loss = candidate_rerank_loss(model, inputs, targets, hard, torch.Generator().manual_seed(0), 0)
    scores = model.position_scores(inputs, torch.cat([targets[..., None], hard.clamp(min=1)], -1))
    expected = []
    for b, t in [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]:
        row = scores[b, t].clone()
        row[1:][hard[b, t] == targets[b, t]] = float("-inf")
        expected.append(torch.logsumexp(row, 0) - row[0])
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="hard_negatives"):
        candidate_rerank_loss(model, inputs, targets, hard[:, :2], torch.Generator(), 0)


def pattern_curve_config(tmp_path: Path, extra: list[str]):
    """A request_curve config for a 300-user walk over 60 items with small models, plus ``extra``."""
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=300, num_items=60)
    return compose_config(
        [
            "data.name=pattern",
            f"data.path={data}",
            "data.max_len=10",
            "llm.max_len=10",
            "llm.hidden_size=32",
            "llm.intermediate_size=64",
            "llm.num_layers=1",
            "llm.num_heads=2",
            "llm.train.lr=0.005",
            "llm.train.batch_size=32",
            "llm.train.progress=false",
            "model.hidden_size=32",
            "train.lr=0.005",
            "train.batch_size=32",
            "train.progress=false",
            "eval.sampled_negatives=20",
            *extra,
        ]
    )


@pytest.mark.slow
def test_request_curve_end_to_end_on_a_stale_pattern(tmp_path: Path) -> None:
    cfg = pattern_curve_config(
        tmp_path,
        [
            "llm.train.epochs=10",
            "llm.train.warmup_steps=5",
            "model.dropout=0.1",
            "train.epochs=8",
            "train.patience=3",
            "collab.candidates=20",
            "collab.srm_epochs=1",
            # The request mechanics on the cloud's own list (a union pool would already hold the target).
            "collab.candidate_pool=llm",
        ],
    )
    summary = run_request_curve(cfg, tmp_path / "run")
    table = summary["test_no_requests"]
    # The walk i -> i + 1 is learnable, but the cloud's prompt is 2 items stale: its own order is poor while
    # the device SRM (real-time history) puts the target first whenever the stale list holds it.
    assert table["llm_only"]["NDCG@10"] < 0.7
    assert table["srm_only"]["NDCG@10"] > 0.9
    assert summary["test_always_request"]["fused"]["NDCG@10"] > 0.99
    curve = {row["ratio"]: row for row in summary["request_curve"]}
    assert curve[0.0]["intelligent"]["NDCG@10"] == pytest.approx(table["fused"]["NDCG@10"])
    assert curve[1.0]["random"]["NDCG@10"] == pytest.approx(
        summary["test_always_request"]["fused"]["NDCG@10"]
    )
    assert abs(curve[0.2]["intelligent"]["actual_ratio"] - 0.2) < 0.08
    # Every compared score gets its own calibrated curve, ending at always-request.
    compared = ["uncovered_mass", "footrule", "topk", "coverage", "missing_mass", "learned"]
    assert list(curve[0.2]["intelligent_by_score"]) == compared
    for method in compared:
        assert abs(curve[0.2]["intelligent_by_score"][method]["actual_ratio"] - 0.2) < 0.08, method
        assert curve[1.0]["intelligent_by_score"][method]["NDCG@10"] == pytest.approx(
            summary["test_always_request"]["fused"]["NDCG@10"]
        )
    assert set(summary["gain_recovered_at_target_by_score_intelligent"]) == set(compared)
    # A node budget lets exactly the top share request.
    assert all(
        row["actual_ratio"] == pytest.approx(0.2, abs=0.01) for row in curve[0.2]["budget_by_score"].values()
    )
    assert set(summary["gain_recovered_at_target_by_score_budget"]) == set(compared)
    # The learned score was fitted on the validation moment and saved for the devices.
    assert LearnedRequestModel.load(tmp_path / "run" / "request_model.json").feature_names == FEATURE_NAMES
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["training"]["srm_training"]["mode"] == "collaborative"
    assert (tmp_path / "run" / "request_curve.png").stat().st_size > 1000
    assert (tmp_path / "run" / "llm" / "item_tokens.json").is_file()
    compact = compact_summary(summary)
    assert set(compact["test_no_requests"]["fused"]) == {"NDCG@10", "HR@10"}


def test_missing_mass_is_the_srm_probability_outside_the_list() -> None:
    items = torch.tensor([[1, 2, 0], [3, 4, 5]])
    catalogue = torch.log(torch.tensor([[0.0, 0.5, 0.3, 0.1, 0.1, 0.0], [0.0, 0.25, 0.25, 0.25, 0.25, 0.0]]))
    mass = inconsistency(items, torch.zeros(2, 3), "missing_mass", srm_catalogue_scores=catalogue)
    assert torch.allclose(mass, torch.tensor([0.2, 0.5]))
    with pytest.raises(ValueError, match="srm_catalogue_scores"):
        inconsistency(items, torch.zeros(2, 3), "missing_mass")


def test_uncovered_mass_counts_only_the_srm_top_n_the_list_lacks() -> None:
    # n = 3 slots: the SRM's top-3 are items 1, 2, 3 in both rows.
    items = torch.tensor([[1, 2, 0], [3, 4, 5], [3, 2, 1]])
    probabilities = torch.tensor(
        [[0.0, 0.5, 0.3, 0.15, 0.05, 0.0], [0.0, 0.4, 0.3, 0.2, 0.1, 0.0], [0.0, 0.4, 0.3, 0.2, 0.1, 0.0]]
    )
    catalogue = torch.log(probabilities)
    uncovered = inconsistency(items, torch.zeros(3, 3), "uncovered_mass", srm_catalogue_scores=catalogue)
    # Row 0: item 3 is missing (the empty slot covers nothing); row 1: items 1 and 2; row 2: nothing.
    assert torch.allclose(uncovered, torch.tensor([0.15, 0.7, 0.0]))
    missing = inconsistency(items, torch.zeros(3, 3), "missing_mass", srm_catalogue_scores=catalogue)
    assert torch.allclose(missing, torch.tensor([0.2, 0.7, 0.1]))  # the tail beyond the top-3 counts there
    with pytest.raises(ValueError, match=r"uncovered_mass.*srm_catalogue_scores"):
        inconsistency(items, torch.zeros(3, 3), "uncovered_mass")


def test_union_candidates_never_hold_a_consumed_item_or_a_repeat() -> None:
    torch.manual_seed(0)
    srm = build_srm("gru4rec", 40, hidden_size=8, dropout=0.0)
    generator = torch.Generator().manual_seed(1)
    histories = pad_left(
        [torch.randint(1, 41, (int(n),), generator=generator).tolist() for n in (3, 8, 1, 12)], 10
    )
    # A stale cloud list that proposes some consumed items (the device drops them) and leaves a slot empty.
    llm_items = torch.stack([torch.randperm(40, generator=generator)[:12] + 1 for _ in range(4)])
    llm_items[:, 0] = histories[:, -1]
    llm_items = drop_seen(llm_items, histories)
    llm_items[2, 5] = 0
    positions = torch.arange(12, dtype=torch.float).expand(4, 12)
    llm_scores = (-positions).masked_fill(llm_items == 0, float("-inf"))
    device_items, device_srm = device_top_items(srm_catalogue_scores(srm, histories), 15)
    items, llm, srm_scores = union_candidates(
        llm_items, llm_scores, srm_candidate_scores(srm, histories, llm_items), device_items, device_srm
    )
    assert items.shape == (4, 27)
    for row in range(4):
        real = items[row][items[row] > 0].tolist()
        assert len(real) == len(set(real)), "an item appears twice"
        assert not set(real) & set(histories[row].tolist()), "a consumed item is a candidate"
        # Every item either side proposed is there, the cloud's in its own slots and order.
        assert set(real) == set(llm_items[row][llm_items[row] > 0].tolist()) | set(device_items[row].tolist())
        assert items[row, :12].tolist() == llm_items[row].tolist()
        # Items only the device proposes score as the cloud's lowest; empty slots score -inf on both sides.
        extra = items[row, 12:] > 0
        floor = llm_scores[row][llm_items[row] > 0].min()
        assert (llm[row, 12:][extra] == floor).all()
        assert (llm[row][items[row] == 0] == float("-inf")).all()
        assert (srm_scores[row][items[row] == 0] == float("-inf")).all()
    # A device-only item keeps its catalogue score: ranking by the SRM alone is the device's own top.
    fused = fuse_scores(llm, srm_scores, items, 0.0)
    assert torch.equal(rerank(items, fused)[:, :10], device_items[:, :10])


def synthetic_moment(targets: list[int], stale: list[list[int]], device: list[list[int]]) -> MomentLists:
    """A moment with the given lists; LLM scores fall with the list position, SRM scores rise with the id."""
    items = torch.tensor(stale)
    llm = -torch.arange(items.shape[1], dtype=torch.float).expand_as(items).clone()
    device_items = torch.tensor(device)
    return MomentLists(
        targets=torch.tensor(targets),
        stale_items=items,
        stale_llm=llm,
        stale_srm=items.float(),
        fresh_items=items,
        fresh_llm=llm,
        fresh_srm=items.float(),
        inconsistency=torch.zeros(len(targets)),
        device_items=device_items,
        device_srm=device_items.float(),
        pool="union",
    )


def test_fusion_weight_is_the_one_best_on_validation_for_each_pool() -> None:
    cfg = typed_run(
        compose_config(["collab.alpha_grid=[0.0,0.3,1.0]"]), RequestCurveSettings, REQUEST_CURVE_IGNORES
    )
    # Validation: the LLM's first item is the target for every user, so the LLM alone (alpha = 1) wins.
    llm_wins = synthetic_moment([1, 4], [[1, 2, 3], [4, 5, 6]], [[9, 8, 7], [9, 8, 7]])
    weights, curve, _ = choose_fusion(llm_wins, cfg, "llm")
    assert weights == FusionWeights(1.0, 0.0) and curve[1.0] > curve[0.0]
    # The target is one only the device proposes (its highest SRM score): only a union pool holds it, and
    # the SRM alone (alpha = 0) ranks it first.
    device_wins = synthetic_moment([9, 9], [[1, 2, 3], [4, 5, 6]], [[9, 8, 7], [9, 8, 7]])
    weights, curve, _ = choose_fusion(device_wins, cfg, "union")
    assert curve[0.0] == curve[0.3] == pytest.approx(1.0)
    assert curve[1.0] < 0.9
    assert weights.alpha == 0.3  # of equally good weights, the one nearest 0.5
    assert choose_fusion(device_wins, cfg, "llm")[1][0.0] == 0.0  # the cloud's list alone never holds it
    fixed = typed_run(compose_config(["collab.alpha=0.3"]), RequestCurveSettings, REQUEST_CURVE_IGNORES)
    assert choose_fusion(device_wins, fixed, "union")[0].alpha == 0.3


def test_union_pool_in_the_request_curve_never_falls_below_the_device_alone(tmp_path: Path) -> None:
    cfg = pattern_curve_config(
        tmp_path,
        [
            "llm.train.epochs=3",
            "train.epochs=6",
            "collab.candidates=10",
            "collab.device_candidates=10",
            "collab.srm_training=standard",
            "request.compare=[]",
        ],
    )
    summary = run_request_curve(cfg, tmp_path / "run")
    collaboration = summary["collaboration"]
    test = collaboration["test"]["all"]
    assert set(test) == {"srm_alone", "llm_alone", "fused_llm", "fused_union", "fused_always_request"}
    # The union holds the device's own top 10, so fusing over it can only add to the device alone when the
    # weight is chosen on validation (here the stale cloud adds nothing: alpha goes to the device).
    assert test["fused_union"]["NDCG@10"] >= test["srm_alone"]["NDCG@10"] - 0.02
    assert test["fused_union"]["NDCG@10"] > test["fused_llm"]["NDCG@10"]
    assert set(collaboration["slice_sizes"]) == {
        "all",
        "rare_targets",
        "popular_targets",
        "cold_users",
        "warm_users",
    }
    assert collaboration["slice_sizes"]["cold_users"] + collaboration["slice_sizes"]["warm_users"] == 300
    assert collaboration["ndcg10_over_device_srm"]["srm_alone"] == 1.0


def test_items_consumed_before_the_model_window_are_still_excluded() -> None:
    torch.manual_seed(0)
    srm = build_srm("gru4rec", 20, hidden_size=8, dropout=0.0)
    histories = [list(range(1, 13)), [5, 6]]
    window = pad_left(histories, 4)  # the model reads the last 4 items only
    catalogue = srm_catalogue_scores(srm, window, seen_items(histories))
    assert torch.isinf(catalogue[0, 1:13]).all() and torch.isfinite(catalogue[0, 13:]).all()
    assert torch.isinf(catalogue[1, [5, 6]]).all() and int(torch.isinf(catalogue[1]).sum()) == 3
    assert drop_seen(torch.tensor([[1, 13], [1, 6]]), seen_items(histories)).tolist() == [[0, 13], [1, 0]]


def test_the_federated_cloud_refuses_a_baseline_llm_it_cannot_report(tmp_path: Path) -> None:
    from lsc4rec.settings import SettingsError, federated_settings_from_overrides

    with pytest.raises(
        SettingsError, match=r"collab\.baseline_llm_path=.*federated runs serve one cloud LLM"
    ):
        federated_settings_from_overrides([f"collab.baseline_llm_path={tmp_path}", "collab.enabled=true"])


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "ttt4rec"])
def test_list_scores_read_from_the_catalogue_equal_the_models_candidate_scores(name: str) -> None:
    torch.manual_seed(0)
    srm = build_srm(name, 30, hidden_size=8, dropout=0.0)
    generator = torch.Generator().manual_seed(2)
    histories = pad_left([torch.randint(1, 31, (n,), generator=generator).tolist() for n in (1, 4, 9)], 6)
    items = torch.randint(1, 31, (3, 7), generator=generator)
    items[1, 3] = 0  # an empty slot
    read = candidate_scores_from(catalogue_scores(srm, histories), items)
    torch.testing.assert_close(read, srm_candidate_scores(srm, histories, items), rtol=1e-5, atol=1e-6)
    assert read[1, 3] == float("-inf")


class _ListsCloud:
    """Answers every request with the same fixed list (consumed items included), scores falling."""

    def __init__(self, items: list[int]) -> None:
        self.items = items

    @property
    def num_items(self) -> int:
        return 30

    @property
    def max_history(self) -> int:
        return 50

    def recommend(self, histories: list[list[int]], n: int) -> CandidateList:
        rows = len(histories)
        items = np.tile(np.array(self.items[:n], dtype=np.int64), (rows, 1))
        return CandidateList(items, -np.arange(n, dtype=np.float32)[None].repeat(rows, 0))


@pytest.mark.parametrize("exclude_history", [True, False])
def test_every_device_requesting_ranks_the_fresh_list_with_its_own_model(exclude_history: bool) -> None:
    """The fresh lists' SRM scores (read from the catalogue's, encoded once) rank as the model's own
    candidate scores do; with the history not excluded a consumed item in a fresh list keeps its score."""
    torch.manual_seed(0)
    srm = build_srm("sasrec", 30, hidden_size=8, dropout=0.0).eval()
    histories = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    targets = [11, 12, 13]
    fresh = [3, 11, 12, 13, 14, 15]  # item 3 is consumed by the first device
    stale = CandidateList(np.array([[20, 21, 22, 23, 24, 25]] * 3), np.zeros((3, 6), dtype=np.float32))
    # alpha 0: the fused ranking is the SRM's own order of the fresh list (llm pool: no device items added).
    settings = CollaborationSettings(
        candidates=6, alpha=0.0, exclude_history=exclude_history, candidate_pool="llm", mode="always"
    )
    served = serve_devices_in_modes(
        srm, histories, targets, stale, _ListsCloud(fresh), settings, {"always": torch.Generator()}, 10, (10,)
    )["always"]
    history = pad_left(histories, 10)
    items = torch.tensor([fresh] * 3)
    if exclude_history:
        items = drop_seen(items, seen_items(histories))
    own = srm_candidate_scores(srm, history, items)
    ranked = rerank(items, own)
    expected = RankingAccumulator((10,))
    expected.add(list_ranks(ranked, torch.tensor(targets)))
    assert served["collab-NDCG@10"] == pytest.approx(expected.compute()["NDCG@10"])
    assert served["requests"] == 3.0


@pytest.mark.parametrize("exclude_history", [True, False])
def test_the_device_alone_row_read_from_the_shared_scores_is_what_evaluate_reports(
    exclude_history: bool,
) -> None:
    from lsc4rec.client.collab.serving import ALONE
    from lsc4rec.training import EvalSet, evaluate

    torch.manual_seed(0)
    srm = build_srm("sasrec", 30, hidden_size=8, dropout=0.0).eval()
    generator = torch.Generator().manual_seed(4)
    histories = [torch.randint(1, 31, (n,), generator=generator).tolist() for n in (2, 5, 9, 14, 3, 7)]
    targets = torch.randint(1, 31, (6,), generator=generator).tolist()
    stale = CandidateList(np.array([[20, 21, 22, 23, 24, 25]] * 6), np.zeros((6, 6), dtype=np.float32))
    settings = CollaborationSettings(candidates=6, exclude_history=exclude_history, mode="never")
    served = serve_devices_in_modes(
        srm, histories, targets, stale, _ListsCloud([1]), settings, {"never": torch.Generator()}, 10, (5, 10),
        rank_alone=True,
    )["never"]  # fmt: skip
    expected = evaluate(
        srm, EvalSet.build("test", histories, targets, 30, 10, 4, exclude_history=exclude_history), (5, 10)
    )["full"]
    assert {k[len(ALONE) :]: v for k, v in served.items() if k.startswith(ALONE)} == pytest.approx(expected)
    assert expected["HR@10"] > 0  # some target is ranked: the comparison is not between empty rows
