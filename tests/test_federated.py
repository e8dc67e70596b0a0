"""Federated training end to end on the in-process grid: learning, faults, checkpoints, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import pattern_overrides, run_inprocess, self_signed_certificate, write_pattern_dataset

from lsc4rec.client.collab.request_model import FEATURE_NAMES, LearnedRequestModel
from lsc4rec.config import config_from_run_config
from lsc4rec.models.srm import ITEM_TABLE_KEY
from lsc4rec.server.components.checkpoint_files import CheckpointError, load_checkpoint
from lsc4rec.server.federated_run import run_federated
from lsc4rec.settings import federated_settings_from_run_config, model_config
from lsc4rec.simulations.launch.inprocess import InProcessGrid

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 60


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return write_pattern_dataset(tmp_path / "pattern.txt", num_users=240, num_items=NUM_ITEMS)


@pytest.mark.slow
def test_federated_run_learns_despite_crashing_and_malformed_nodes(data: Path, tmp_path: Path) -> None:
    summary = run_inprocess(
        data,
        tmp_path / "run",
        4,
        "federated.rounds=4",
        "federated.faults.crash=1",
        "federated.faults.malformed=2",
        "strategy.min_train_replies=2",
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["rounds"]) == 4
    # Two healthy nodes carry the model: random ranking of 60 items would give NDCG@10 ~ 0.07.
    assert summary["test"]["full"]["NDCG@10"] > 0.5, summary["test"]
    first, last = metrics["rounds"][0], metrics["rounds"][-1]
    assert last["server_valid"]["NDCG@10"] > first["server_valid"]["NDCG@10"]
    for row in metrics["rounds"]:
        assert row["train"]["valid-replies"] == 2 and row["train"]["failures"] == 2
        assert row["train"]["bytes-sent"] > 0 and row["train"]["bytes-received"] > 0
        assert {f["node_id"] for f in row["failed_nodes"] if f["stage"] == "train"} == {2, 3}
    reasons = {f["node_id"]: f["reason"] for f in metrics["failed_nodes"] if f["stage"] == "train"}
    assert "injected crash" in reasons[2]
    assert "array keys differ" in reasons[3]
    assert summary["failures"] == metrics["final"]["failures"] > 0
    assert (tmp_path / "run" / "rounds.png").stat().st_size > 1000


@pytest.mark.slow
def test_too_few_updates_keep_the_previous_global_model(data: Path, tmp_path: Path) -> None:
    run_inprocess(
        data,
        tmp_path / "run",
        2,
        "federated.rounds=1",
        "federated.faults.crash=0",
        "strategy.min_train_replies=2",
    )
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    torch.manual_seed(42)
    cfg = config_from_run_config({"overrides": pattern_overrides(data)})
    from lsc4rec.training import build_model_from_config

    initial = build_model_from_config(model_config(cfg.model), NUM_ITEMS, 10).state_dict()
    assert all(torch.equal(state["arrays"][k], initial[k]) for k in initial)


@pytest.mark.slow
def test_corrupt_or_truncated_checkpoints_are_refused(data: Path, tmp_path: Path) -> None:
    run_inprocess(data, tmp_path / "run", 2, "federated.rounds=1")
    path = tmp_path / "run" / "checkpoint.pt"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    flipped = bytearray(good)
    flipped[-100] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad header"):
        load_checkpoint(path)
    # A resume against a missing checkpoint says what to do.
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        run_inprocess(data, tmp_path / "elsewhere", 2, "federated.rounds=1", "federated.resume=true")


def test_checkpoint_for_another_model_is_refused(data: Path, tmp_path: Path) -> None:
    run_inprocess(data, tmp_path / "run", 2, "federated.rounds=1")
    cfg = config_from_run_config({"overrides": pattern_overrides(data, "model.hidden_size=32")})
    from lsc4rec.training import build_model_from_config

    other = build_model_from_config(model_config(cfg.model), NUM_ITEMS, 10).state_dict()
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(tmp_path / "run" / "checkpoint.pt", reference=other)


def _cli(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lsc4rec.simulations.federated",
        "federated.runtime=inprocess",
        "federated.num_supernodes=3",
        *pattern_overrides(data).split(),
        f"output_dir={out}",
        f"run_name={name}",
        *extra,
    ]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(data: Path, tmp_path: Path) -> None:
    rounds = "federated.rounds=4"
    full = subprocess.run(
        _cli(data, tmp_path, "full", rounds), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert full.returncode == 0, full.stderr[-3000:]
    assert full.stdout.strip().splitlines()[-1].startswith("RESULT ")

    # Start the same run, SIGKILL it once round 2's checkpoint exists, then resume it.
    killed = subprocess.Popen(
        _cli(data, tmp_path, "killed", rounds),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if checkpoint.exists() and load_checkpoint(checkpoint)["round"] >= 2:
                break
            assert killed.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.killpg(killed.pid, signal.SIGKILL)
    finally:
        killed.wait(timeout=30)
    interrupted_at = load_checkpoint(checkpoint)["round"]
    assert 2 <= interrupted_at < 4, "the kill must land mid-run"
    assert not (tmp_path / "killed" / "model_last.pt").exists()

    resumed = subprocess.run(
        _cli(data, tmp_path, "killed", rounds, "federated.resume=true"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming killed after round {interrupted_at}" in resumed.stderr + resumed.stdout
    expected = torch.load(tmp_path / "full" / "model_last.pt")
    got = torch.load(tmp_path / "killed" / "model_last.pt")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    history = json.loads((tmp_path / "killed" / "metrics.json").read_text())["rounds"]
    assert [row["round"] for row in history] == [1, 2, 3, 4]


@pytest.mark.slow
def test_din_trains_federated_under_the_sampled_protocol(data: Path, tmp_path: Path) -> None:
    # DIN ranks with target attention: evaluated on target + 20 sampled negatives (random: HR@10 = 10/21).
    summary = run_inprocess(data, tmp_path / "run", 2, "model=din", "federated.rounds=8", "train.lr=0.01")
    assert set(summary["test"]) == {"sampled"}
    rounds = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert all("client-HR@10" in row["client_evaluate"] for row in rounds)
    assert summary["test"]["sampled"]["HR@10"] > 0.8, summary["test"]


@pytest.mark.slow
def test_node_state_counts_rounds_across_messages(data: Path, tmp_path: Path) -> None:
    run_config = {"overrides": pattern_overrides(data, "federated.rounds=3", "federated.fraction_evaluate=0")}
    grid = InProcessGrid(2, run_config)
    run_federated(grid, federated_settings_from_run_config(run_config), tmp_path / "run")
    for context in grid.contexts.values():
        state = context.state.metric_records["node"]
        assert state["rounds-trained"] == 3 and state["examples-trained"] > 0


@pytest.mark.slow
def test_nodes_keep_their_adam_moments_and_decay_lr_across_rounds(data: Path, tmp_path: Path) -> None:
    run_config = {
        "overrides": pattern_overrides(
            data,
            "federated.rounds=3",
            "federated.fraction_evaluate=0",
            "federated.keep_optimizer_state=true",
            "federated.round_lr_decay=0.5",
            "train.batch_size=64",
        )
    }
    grid = InProcessGrid(2, run_config)
    summary = run_federated(grid, federated_settings_from_run_config(run_config), tmp_path / "run")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert [row["train"]["lr"] for row in history] == pytest.approx([0.005, 0.0025, 0.00125])
    for context in grid.contexts.values():
        moments = context.state.array_records["optimizer"]
        # 120 devices per node in batches of 64 = 2 steps a round: the counter ran on over 3 rounds.
        assert float(moments["0.step"].numpy()) == 6.0
    assert summary["test"]["full"]["NDCG@10"] > 0


@pytest.mark.slow
def test_row_weighting_changes_only_item_rows_and_follows_node_counts(data: Path, tmp_path: Path) -> None:
    finals = {}
    for flag in ("false", "true"):
        run_inprocess(
            data,
            tmp_path / flag,
            3,
            "federated.rounds=1",
            "federated.fraction_evaluate=0",
            f"strategy.row_weighting={flag}",
        )
        finals[flag] = torch.load(tmp_path / flag / "model_last.pt")
    plain, weighted = finals["false"], finals["true"]
    # Dense parameters are aggregated identically; only the item table is averaged per row.
    for key in plain:
        if key != ITEM_TABLE_KEY:
            assert torch.equal(plain[key], weighted[key]), key
    assert not torch.allclose(plain[ITEM_TABLE_KEY], weighted[ITEM_TABLE_KEY])
    # Every node's pattern data holds every item, so rows stay close to FedAvg, yet they differ by counts.
    assert torch.allclose(plain[ITEM_TABLE_KEY], weighted[ITEM_TABLE_KEY], atol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("score", ["uncovered_mass", "learned"])
def test_collaboration_runs_inside_the_flower_app(data: Path, tmp_path: Path, score: str) -> None:
    # The candidate service speaks TLS, as it must for real devices; the nodes verify it with the CA file.
    certificate, key = self_signed_certificate(tmp_path, "cloud")
    request = [f"request.score={score}"]
    if score == "uncovered_mass":
        # This dataset carries item text, so the ServerApp's cloud LLM is text-grounded (llm.item_init=auto).
        lines = [
            json.dumps({"item_id": i, "title": f"step {i} of the walk"}) for i in range(1, NUM_ITEMS + 1)
        ]
        data.with_name("pattern_item_text.jsonl").write_text("\n".join(lines) + "\n")
        # The devices also fuse the content term: the catalogue's text vectors reach every node.
        request.append("collab.content_weight=0.3")
    if score == "learned":
        # The devices load a shipped request model (here: request when the SRM is unsure).
        weights = [0.0] * len(FEATURE_NAMES)
        weights[FEATURE_NAMES.index("srm_top1")] = -1.0
        model = LearnedRequestModel([0.0] * len(weights), [1.0] * len(weights), weights, 0.0)
        model.save(tmp_path / "req.json")
        request.append(f"request.model_path={tmp_path / 'req.json'}")
    summary = run_inprocess(
        data,
        tmp_path / "run",
        2,
        *request,
        "federated.rounds=2",
        "collab.enabled=true",
        f"collab.service_certificate={certificate}",
        f"collab.service_key={key}",
        f"collab.service_root_certificates={certificate}",
        "collab.service_public_address=localhost",
        "collab.candidates=20",
        "request.target_ratio=0.25",
        "llm.max_len=10",
        "llm.hidden_size=32",
        "llm.intermediate_size=64",
        "llm.num_layers=1",
        "llm.num_heads=2",
        "llm.train.epochs=8",
        "llm.train.lr=0.005",
        "llm.train.warmup_steps=5",
        "llm.train.batch_size=32",
        "llm.train.progress=false",
    )
    rounds = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    for row in rounds:
        client = row["client_evaluate"]
        # Each node's budget: a quarter of its 120 devices request a fresh list, uploading their histories.
        assert client["request-rate"] == pytest.approx(0.25, abs=0.01)
        assert client["request-bytes-per-device"] > 0 and client["list-bytes-per-device"] == 8 + 20 * 12
        assert 0.0 <= client["client-collab-NDCG@10"] <= 1.0
        # Requests replace stale lists with fresh ones, which on this walk can only help.
        assert client["client-collab-NDCG@10"] >= client["client-collab-before-request-NDCG@10"]
    collaboration = summary["collaboration"]
    assert collaboration["cloud"]["cloud_lag"] == 2
    assert collaboration["cloud"]["service"]["tls"] is True
    assert (tmp_path / "run" / "llm" / "item_tokens.json").is_file()
    grounded = score == "uncovered_mass"
    assert collaboration["cloud"]["item_init"] == ("text" if grounded else "random")
    assert (tmp_path / "run" / "llm" / "item_text_part.safetensors").is_file() == grounded
    assert "client-collab-HR@10" in collaboration["last_round"]
    if grounded:
        assert summary["item_text"]["bytes_sent"] == 2 * summary["item_text"]["record_bytes"]
    else:
        assert "item_text" not in summary


def test_candidate_service_addresses_and_tls_settings(tmp_path: Path) -> None:
    from flwr.app import Context, RecordDict
    from omegaconf import OmegaConf

    from lsc4rec.client.collaboration import candidate_root_certificates
    from lsc4rec.server.components.cloud_llm import public_address, service_tls

    assert public_address(None, "0.0.0.0:50051") == "0.0.0.0:50051"
    assert public_address("cloud.lan", "0.0.0.0:50051") == "cloud.lan:50051"
    assert public_address("cloud.lan:443", "0.0.0.0:50051") == "cloud.lan:443"
    assert service_tls(OmegaConf.create({"service_certificate": None, "service_key": None})) is None
    with pytest.raises(ValueError, match=r"service_certificate and collab\.service_key go together"):
        service_tls(OmegaConf.create({"service_certificate": "a.crt", "service_key": None}))
    cfg = OmegaConf.create({"collab": {"service_root_certificates": None}})
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match=r"set collab\.service_root_certificates or the SuperNode.s node"):
        candidate_root_certificates(context, cfg)
    context.node_config["candidate-ca"] = str(tmp_path / "nowhere.crt")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.crt does not exist on this device"):
        candidate_root_certificates(context, cfg)
    (tmp_path / "ca.crt").write_text("pem")
    context.node_config["candidate-ca"] = str(tmp_path / "ca.crt")
    assert candidate_root_certificates(context, cfg) == tmp_path / "ca.crt"
