"""The learned request policy: its features, its fit, its file, and devices deciding with it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lsc4rec.client.collab.request_model import FEATURE_NAMES, LearnedRequestModel, request_features
from lsc4rec.client.collab.request_policy import inconsistency
from lsc4rec.client.collab.serving import CollaborationSettings, serve_devices, serve_devices_in_modes
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.models.srm import build_srm

NUM_ITEMS = 30


def test_features_match_the_fixed_scores_they_contain() -> None:
    generator = torch.Generator().manual_seed(0)
    items = torch.randperm(NUM_ITEMS, generator=generator)[:10].add(1).repeat(4, 1)
    items[1, 6:] = 0  # a list the cloud could only partly fill
    catalogue = torch.randn(4, NUM_ITEMS + 1, generator=generator)
    catalogue[:, 0] = float("-inf")
    srm_scores = catalogue.gather(1, items).masked_fill(items == 0, float("-inf"))
    llm_scores = torch.linspace(-1.0, -5.0, 10).repeat(4, 1).masked_fill(items == 0, float("-inf"))
    histories = torch.tensor([[0, 0, 3], [0, 4, 5], [6, 7, 8], [0, 0, 9]])
    features = request_features(items, srm_scores, llm_scores, catalogue, histories)
    assert features.shape == (4, len(FEATURE_NAMES)) and torch.isfinite(features).all()
    column = {name: features[:, i] for i, name in enumerate(FEATURE_NAMES)}
    args = dict(srm_catalogue_scores=catalogue)
    assert torch.allclose(
        column["uncovered_mass_n"], inconsistency(items, srm_scores, "uncovered_mass", **args)
    )
    assert torch.allclose(column["missing_mass"], inconsistency(items, srm_scores, "missing_mass", **args))
    assert torch.allclose(column["footrule"], inconsistency(items, srm_scores, "footrule"))
    assert torch.allclose(column["list_fill"], torch.tensor([1.0, 0.6, 1.0, 1.0]))
    assert torch.allclose(column["log_history_length"], torch.log1p(torch.tensor([1.0, 2.0, 3.0, 1.0])))
    # The uncovered mass grows with the top-k it looks at; the LLM's top-1 is its softmax over its own list.
    assert (column["uncovered_mass_n/5"] <= column["uncovered_mass_n"] + 1e-6).all()
    assert (column["uncovered_mass_n"] <= column["uncovered_mass_4n"] + 1e-6).all()
    assert column["llm_top1_in_list"][0] == pytest.approx(float(torch.softmax(llm_scores[0], 0)[0]))


def test_fit_recovers_a_linear_gain_and_survives_a_round_trip(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2000, len(FEATURE_NAMES), generator=generator)
    gains = 0.3 * features[:, 2] - 0.1 * features[:, 9] + 0.01 * torch.randn(2000, generator=generator)
    model = LearnedRequestModel.fit(features, gains)
    prediction = model.predict(features)
    assert float(torch.corrcoef(torch.stack([prediction, gains]))[0, 1]) > 0.99
    assert model.weights[2] == pytest.approx(0.3, rel=0.05) and model.weights[9] == pytest.approx(
        -0.1, rel=0.1
    )
    model.save(tmp_path / "request_model.json")
    loaded = LearnedRequestModel.load(tmp_path / "request_model.json")
    assert torch.equal(loaded.predict(features), prediction)


def test_bad_inputs_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"features \(5, 3\) must be \[N, 19\]"):
        LearnedRequestModel.fit(torch.zeros(5, 3), torch.zeros(5))
    with pytest.raises(ValueError, match="must be finite"):
        LearnedRequestModel.fit(torch.full((5, len(FEATURE_NAMES)), float("nan")), torch.zeros(5))
    with pytest.raises(FileNotFoundError, match=r"request\.model_path: no request model at"):
        LearnedRequestModel.load(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not a request model"):
        LearnedRequestModel.load(tmp_path / "bad.json")
    model = LearnedRequestModel.fit(torch.randn(50, len(FEATURE_NAMES)), torch.randn(50))
    model.save(tmp_path / "old.json")
    raw = json.loads((tmp_path / "old.json").read_text())
    raw["feature_names"] = raw["feature_names"][:-1]
    (tmp_path / "old.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"old\.json: request model features"):
        LearnedRequestModel.load(tmp_path / "old.json")
    with pytest.raises(ValueError, match=r"request\.score=learned needs request\.model_path"):
        CollaborationSettings(score="learned")


class RecordingCloud:
    """A candidate source that answers every request with the target first and records who asked."""

    def __init__(self, next_item: dict[int, int]) -> None:
        self.next_item = next_item
        self.asked: list[int] = []

    @property
    def num_items(self) -> int:
        return NUM_ITEMS

    @property
    def max_history(self) -> int:
        return 50

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        rows = []
        for history in histories:
            self.asked.append(history[-1])
            target = self.next_item[history[-1]]
            rest = [i for i in range(1, NUM_ITEMS + 1) if i not in (target, *history)]
            rows.append([target, *rest[: n - 1]])
        scores = np.tile(-np.arange(n, dtype=np.float32), (len(rows), 1))
        return CandidateList(np.asarray(rows, dtype=np.int64), scores)


def test_devices_request_where_the_learned_model_predicts_the_largest_gain() -> None:
    # Eight devices; the cloud filled only two slots of the lists of devices 4..7. A model that predicts a
    # larger gain for emptier lists (negative weight on list_fill) must send exactly those four to the cloud.
    torch.manual_seed(0)
    srm = build_srm("sasrec", NUM_ITEMS, hidden_size=8, num_blocks=1, num_heads=1, dropout=0.0, max_len=5)
    histories = [[d + 1, d + 2] for d in range(8)]
    targets = [d + 21 for d in range(8)]
    items = np.tile(np.arange(11, 21, dtype=np.int64), (8, 1))
    items[4:, 2:] = 0
    scores = np.where(items > 0, -np.arange(10, dtype=np.float32), -np.inf).astype(np.float32)
    weights = [0.0] * len(FEATURE_NAMES)
    weights[FEATURE_NAMES.index("list_fill")] = -1.0
    model = LearnedRequestModel([0.0] * len(weights), [1.0] * len(weights), weights, 0.0)
    # Fusion over the cloud's list only: the union would also hold the device's own top items.
    settings = CollaborationSettings(
        candidates=10, score="learned", ratio=0.5, request_model=model, candidate_pool="llm"
    )
    cloud = RecordingCloud({d + 2: d + 21 for d in range(8)})
    metrics = serve_devices(
        srm,
        histories,
        targets,
        CandidateList(items, scores),
        cloud,
        settings,
        5,
        torch.Generator().manual_seed(0),
    )
    assert sorted(cloud.asked) == [6, 7, 8, 9]  # the last history items of devices 4..7
    assert metrics["requests"] == 4.0
    # The fresh lists put the target first; with alpha 0.5 it stays in the top 10, the stale lists miss it.
    assert metrics["collab-HR@10"] == pytest.approx(0.5) and metrics["collab-before-request-HR@10"] == 0.0
    # Over the union the same devices request, and no device ranks worse than over the cloud's list alone.
    union_cloud = RecordingCloud({d + 2: d + 21 for d in range(8)})
    union = serve_devices(
        srm,
        histories,
        targets,
        CandidateList(items, scores),
        union_cloud,
        replace(settings, candidate_pool="union"),
        5,
        torch.Generator().manual_seed(0),
    )
    assert sorted(union_cloud.asked) == sorted(cloud.asked)
    assert union["collab-HR@10"] >= metrics["collab-HR@10"]


def test_serving_several_request_modes_at_once_equals_serving_each_alone() -> None:
    # The final table's budget and every-device rows come from one pass: the same metrics as two separate
    # passes, with the fresh lists fetched once for the devices either mode lets request.
    torch.manual_seed(0)
    srm = build_srm("sasrec", NUM_ITEMS, hidden_size=8, num_blocks=1, num_heads=1, dropout=0.0, max_len=5)
    histories = [[d + 1, d + 2, d % 3 + 1] for d in range(8)]
    targets = [d + 21 for d in range(8)]
    items = np.tile(np.arange(11, 21, dtype=np.int64), (8, 1))
    items[5:, 3:] = 0
    scores = np.where(items > 0, -np.arange(10, dtype=np.float32), -np.inf).astype(np.float32)
    stale = CandidateList(items, scores)
    settings = CollaborationSettings(candidates=10, ratio=0.25)
    answers = {d % 3 + 1: d + 21 for d in range(8)}
    alone = {}
    for mode in ("intelligent", "always"):
        cloud = RecordingCloud(answers)
        alone[mode] = serve_devices(
            srm,
            histories,
            targets,
            stale,
            cloud,
            replace(settings, mode=mode),
            5,
            torch.Generator().manual_seed(3),
        )
    shared_cloud = RecordingCloud(answers)
    together = serve_devices_in_modes(
        srm,
        histories,
        targets,
        stale,
        shared_cloud,
        settings,
        {mode: torch.Generator().manual_seed(3) for mode in ("intelligent", "always")},
        5,
    )
    assert together == alone
    assert together["intelligent"]["requests"] == 2.0 and together["always"]["requests"] == 8.0
    assert len(shared_cloud.asked) == 8  # one fresh list per device, not 2 + 8
