"""The whole system (`make run`'s preset, conf/system/whole.yaml) at tiny size, every part on, and each part
shown to have acted: time moved (each round's arrivals served, TTT states advanced by streaming updates), the
cloud LLM served candidates and devices requested fresh lists within the budget, each round's local update
trained on the cloud's lists first, the SOLID codebook moved to a new version, MergeNet transferred into the
global model, the devices' final rankings went through ONNX Runtime (a graph exported on each node, checked
against the model), the catalogue's text vectors reached every node once (text part, content term), the model
learned well above random, and the final table came from the devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import WHOLE_TINY, run_inprocess, write_pattern_dataset, write_pattern_text

from lsc4rec.client.onnx_folders import onnx_root

NUM_ITEMS = 40


def run_whole_tiny(tmp_path: Path, num_users: int, *overrides: str) -> tuple[dict, list[dict]]:
    """The whole system (`make run`'s preset) at tiny size over 2 rounds with 2 replayed interactions, on a
    pattern dataset with item text; returns the summary and the rounds' rows, checking that no node failed."""
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=num_users, num_items=NUM_ITEMS)
    write_pattern_text(data, NUM_ITEMS)
    summary = run_inprocess(
        data,
        tmp_path / "run",
        2,
        *WHOLE_TINY,
        "federated.rounds=2",
        "federated.replay_interactions=2",
        *overrides,
        system="whole",
    )
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert summary["failures"] == 0 and len(rows) == 2
    return summary, rows


@pytest.mark.slow
def test_every_part_acts_in_one_federated_run(tmp_path: Path) -> None:
    graphs_before = set(onnx_root().iterdir()) if onnx_root().is_dir() else set()
    # The whole system as `make run` composes it (conf/system/whole.yaml), at tiny size.
    summary, rows = run_whole_tiny(
        tmp_path,
        300,
        # Every round serves an arrival (the default's closing round is tested below).
        "federated.replay_closing_round=false",
        "solid.features=[text,embedding]",
        "request.target_ratio=0.25",
        "llm.train.epochs=3",
        # List distillation in the pass over the cloud's lists: the lists come with the cloud's scores.
        "collab.distill_weight=0.5",
    )
    # The nodes' ONNX graphs went with the test phase (a long soak must not fill the disk).
    assert (set(onnx_root().iterdir()) if onnx_root().is_dir() else set()) <= graphs_before
    client = [row["client_evaluate"] for row in rows]
    # Collaborative training: every round's local update first trained on the cloud's per-position lists.
    assert all(row["train"]["rerank-positions"] > 0 and row["train"]["rerank-loss"] > 0 for row in rows)
    # Time moved: every device served the interactions arriving in each round (one per round), its TTT
    # states advanced by one streaming update per arrival.
    assert all(c["replay-arrivals-per-device"] == 1.0 for c in client)
    assert all(c["streaming-updates-per-device"] == 1.0 for c in client)
    # Cloud: devices fused the cloud's lists; at each arrival a quarter of them requested fresh ones,
    # answered by the service.
    assert all(c["request-rate"] == pytest.approx(0.25, abs=0.02) for c in client)
    assert all(c["request-bytes-per-device"] > 0 and "replay-collab-NDCG@10" in c for c in client)
    # collab.alpha=auto: round 1 fused at 0.5, later rounds and the test at the best weight on the arrivals.
    fusion = summary["collaboration"]
    assert rows[0]["collaboration"]["fusion-alpha"] == 0.5 and len(fusion["alpha_on_arrivals"]) == 11
    best = max(fusion["alpha_on_arrivals"].values())
    assert fusion["alpha_on_arrivals"][f"{fusion['alpha']:g}"] == best
    # The candidate service (ONNX Runtime, micro-batching) logged each round's calls: stale lists by user id,
    # fresh lists at requests, per-position lists for training; none failed.
    assert summary["collaboration"]["cloud"]["service_runtime"] == "onnx"
    for row in rows:
        service = row["collaboration"]["service"]
        for method in ("RecommendForUsers", "RecommendBatch", "PositionCandidatesForUsers"):
            assert service[method]["calls"] > 0 and service[method]["errors"] == 0, (method, service)
    # The knowledge path: the catalogue's text vectors reached each node once (the SRM's text part and the
    # devices' content term read them), and the global model carries the text part's projection.
    assert summary["item_text"]["bytes_sent"] == 2 * summary["item_text"]["record_bytes"] > 0
    assert "item_text.projection.weight" in torch.load(tmp_path / "run" / "model_last.pt")
    # SOLID: the nodes' statistics moved the global codebook to a new version.
    assert summary["codebook"]["version"] >= 1 and rows[0]["codebook"]["codebook-updated"] == 1
    # MergeNet: the adapter rewrote the global model before each round and learned from the aggregate.
    assert all(row["mergenet"]["mergenet-adapter-loss"] > 0 for row in rows)
    # Learned: a random ranking of the 40 items (history excluded) gives NDCG@10 about 0.13.
    assert summary["test"]["full"]["NDCG@10"] > 0.3, summary["test"]["full"]
    # What round 1 started from: the warm start on the cloud's stale copy, validated by the server.
    assert summary["warm_start"]["epochs"] == 1 and summary["round_0_valid"]["NDCG@10"] > 0
    # ONNX Runtime scored the devices' final rankings and lists (the graph exported on each node; with time
    # moving the rounds serve through PyTorch's streaming steps, so there is no earlier graph to update).
    assert summary["device_test"]["onnx-weights-updated"] == 0.0
    assert summary["device_test"]["onnx-export-seconds"] > 0
    # The final table: device alone (through ONNX Runtime: the server's own test of the last round),
    # collaborative at no / budgeted / all requests, and the cloud's list alone.
    table = {row["setting"]: row for row in summary["final_table"]}
    assert len(table) == 6
    # The reference row: the warm-started model before any device data, tested by the server.
    warm = table["cloud's warm start alone (no device data)"]["NDCG@10"]
    assert warm == pytest.approx(summary["warm_start"]["test"]["NDCG@10"])
    device = table["device alone"]["NDCG@10"]
    assert device == pytest.approx(summary["test_last_round"]["full"]["NDCG@10"], abs=1e-5)
    assert table["collaborative, every device requests"]["request_rate"] == 1.0
    assert table["collaborative, request budget"]["request_rate"] == pytest.approx(0.25, abs=0.02)


@pytest.mark.slow
def test_a_closing_round_trains_the_final_model_on_every_arrival(tmp_path: Path) -> None:
    summary, rows = run_whole_tiny(tmp_path, 200, "federated.replay_closing_round=true", "llm.train.epochs=1")
    client = [row["client_evaluate"] for row in rows]
    # Round 1 serves both arrivals of every device; the closing round serves none and trained on them.
    assert client[0]["replay-arrivals-per-device"] == 2.0 and client[1]["replay-arrivals-per-device"] == 0.0
    assert rows[1]["train"]["num-examples"] > rows[0]["train"]["num-examples"]
    # The fusion weight was chosen on round 1's arrivals and the final table was made.
    fusion = summary["collaboration"]
    assert fusion["alpha_on_arrivals"][f"{fusion['alpha']:g}"] == max(fusion["alpha_on_arrivals"].values())
    # Where the time went: every phase timed, the phases within the run's wall time.
    phases = summary["phase_seconds"]
    assert set(phases) >= {"warm start", "rounds", "devices' test", "server test and report"}
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) <= summary["wall_seconds"] + 5.0
    assert summary["test"]["full"]["NDCG@10"] > 0.3, summary["test"]["full"]


@pytest.mark.slow
def test_the_whole_system_runs_under_local_dp_and_reports_every_devices_epsilon(tmp_path: Path) -> None:
    """`make run ARGS=privacy.mode=local ...` at tiny size: SOLID on TTT4Rec with the text part trains by
    DP-SGD, the pass over the cloud's lists included (its steps in each node's ledger), Adam moments carried,
    no codebook statistics leave the nodes, and the final table carries the ε every device spent."""
    summary, rows = run_whole_tiny(
        tmp_path, 300, "llm.train.epochs=1", "privacy.mode=local", "privacy.target_epsilon=8"
    )
    train = [row["train"] for row in rows]
    # DP-SGD trained every round: the local epochs' full softmax by the whole-model engine (1), the pass over
    # the cloud's lists first (by the row-gather engine).
    assert all(t["grad-sample-mode"] == 1.0 and t["rerank-positions"] > 0 for t in train)
    assert all(0 < t["rerank-loss"] < 20 and 0 <= t["rerank-clipped-fraction"] <= 1 for t in train)
    # The ledgers: ε grows each round and the planned run ends at its target (the pass's steps included).
    assert 0 < train[0]["epsilon"] < train[1]["epsilon"] == pytest.approx(8.0, abs=0.1)
    # SOLID's codebook: no statistics came back, so it stayed the one built before the rounds.
    assert all(row["codebook"]["codebook-updated"] == 0 for row in rows)
    assert summary["codebook"]["version"] == 0
    # The final table: the devices' rows carry every device's ε and δ; the cloud's list and the warm start
    # had no device data and carry none.
    table = {row["setting"]: row for row in summary["final_table"]}
    assert summary["privacy"]["mode"] == "local"
    for setting in ("device alone", "collaborative, no requests", "collaborative, every device requests"):
        assert table[setting]["epsilon"] == pytest.approx(summary["privacy"]["epsilon"])
        assert table[setting]["delta"] == summary["privacy"]["delta"] > 0
    assert "epsilon" not in table["cloud alone (its stale list)"]
    assert "epsilon" not in table["cloud's warm start alone (no device data)"]
    # Learned through the noise: a random ranking of the 40 items gives NDCG@10 about 0.13.
    assert table["device alone"]["NDCG@10"] > 0.13, table


@pytest.mark.slow
def test_the_fresh_prior_reaches_the_devices_rankings_under_local_dp(tmp_path: Path) -> None:
    """`make run ARGS="privacy.mode=local privacy.target_epsilon=8 privacy.fresh_prior=true"` at tiny size:
    the devices' test (through ONNX Runtime, fused with the cloud's lists) adds the prior the server chose,
    so the device-alone row is the server's own test with the prior; every device's ε, the prior's releases
    included, ends at the target."""
    summary, rows = run_whole_tiny(
        tmp_path,
        300,
        "llm.train.epochs=1",
        "privacy.mode=local",
        "privacy.target_epsilon=8",
        "privacy.fresh_prior=true",
        # One weight: the choice is forced, so every ranking after the rounds carries the prior.
        "privacy.fresh_prior_weights=[1.0]",
    )
    assert summary["fresh_prior"]["weight"] == 1.0 and summary["fresh_prior"]["nodes_counted"] == 2
    assert rows[1]["fresh_prior"]["nodes_choosing"] == 2
    table = {row["setting"]: row for row in summary["final_table"]}
    device = table["device alone"]["NDCG@10"]
    assert device == pytest.approx(summary["test_last_round"]["full"]["NDCG@10"], abs=1e-5)
    assert table["device alone"]["epsilon"] == pytest.approx(8.0, rel=0.01)
    assert table["device alone"]["epsilon"] <= 8.0 + 1e-9
