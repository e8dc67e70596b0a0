"""A custom SRM in one file (docs/custom_model.md): a user's own ``SequentialRecommender`` subclass, defined
here and named by its dotted path (``model=custom model.target=test_custom_model.TinyRec``), is checked up
front, trained centrally and federated, exported to ONNX and run in the whole system as SOLID's base, without
a line of the package naming it. Each wrong configuration is one clear error naming the key and its value.

The class must be importable wherever the model is built: pytest puts ``tests/`` on ``sys.path`` (this module
is ``test_custom_model``), and the federated runs here use the in-process grid, so every node imports it from
this same process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PATTERN_RUN, WHOLE_TINY, run_inprocess, write_pattern_dataset, write_pattern_text
from torch import Tensor, nn

from lsc4rec.config import compose_config
from lsc4rec.models.solid import SolidRecommender
from lsc4rec.models.srm import CustomSRMConfig, SequentialRecommender
from lsc4rec.settings import SettingsError, federated_settings_from_overrides, model_config
from lsc4rec.training import build_model_from_config

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 60
MAX_LEN = 10


# ---------------------------------------------------------------- the user's model (docs/custom_model.md)
class TinyRec(SequentialRecommender):
    """Recency-weighted mean pooling: the state after position t is ``W · Σ_{s≤t} γ^(t−s) e(item_s) + b``.

    ``hidden_size``: width of the item vectors and the state; ``dropout``: on the item vectors; ``decay``:
    the starting value of γ (learned).
    """

    def __init__(
        self, num_items: int, hidden_size: int = 32, dropout: float = 0.1, decay: float = 0.5
    ) -> None:
        super().__init__(num_items, hidden_size)  # the item table: self.item_embedding, row 0 = padding
        nn.init.xavier_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.decay_logit = nn.Parameter(torch.logit(torch.tensor(float(decay))))
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, hidden_size)

    def _pooled(self, history: Tensor) -> Tensor:
        """``Σ_{s≤t} γ^(t−s) e(item_s)`` at every position t, ``[B, L, d]``; padding adds nothing."""
        items = self.dropout(self.embed_items(history)) * (history != 0).unsqueeze(-1)
        steps = torch.arange(history.size(1), device=history.device)
        gaps = steps.unsqueeze(1) - steps.unsqueeze(0)  # [L, L]: t - s
        weights = torch.sigmoid(self.decay_logit) ** gaps.clamp(min=0) * (gaps >= 0)
        return torch.einsum("ts,bsd->btd", weights, items)

    def encode(self, history: Tensor) -> Tensor:
        """States ``[B, L, d]`` of a left-padded ``history [B, L]``: causal, zero at padding."""
        return self.output(self._pooled(history)) * (history != 0).unsqueeze(-1)

    # Optional: streaming (one step per new interaction instead of re-encoding the history).
    @property
    def supports_streaming(self) -> bool:
        """This model streams: :meth:`prefill` and :meth:`step`."""
        return True

    def prefill(self, history: Tensor) -> tuple[Tensor, Tensor]:
        """``(state [B, d], hidden [B, d])`` after ``history``; zero hidden for a row without items."""
        state = self._pooled(history)[:, -1]
        return state, self.output(state) * (history != 0).any(dim=1, keepdim=True)

    def step(self, state: Tensor, item_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``item_ids [B]``: ``γ · state + e(item)``, at a cost independent of the history's length."""
        state = torch.sigmoid(self.decay_logit) * state + self.embed_items(item_ids)
        return state, self.output(state)


# ---------------------------------------------------------------- models that a run must refuse
class NotAnSRM(nn.Module):
    """A module, but not a ``SequentialRecommender``."""


class NoEncoder(SequentialRecommender):
    """Misses the one abstract method, ``encode``."""


class OwnScoring(TinyRec):
    """Scores by a method of its own (as DIN does): fine alone, but not a base SOLID can wrap."""

    def score_all(self, history: Tensor) -> Tensor:
        """Scores after the history (the inherited ones, but overridden)."""
        return super().score_all(history)


class NoDropout(SequentialRecommender):
    """A width but no dropout argument: SOLID's ``model.dropout`` would not reach it."""

    def __init__(self, num_items: int, hidden_size: int = 8) -> None:
        super().__init__(num_items, hidden_size)

    def encode(self, history: Tensor) -> Tensor:
        """The item vectors themselves (position t sees item t only)."""
        return self.embed_items(history)


class ReplacedTable(NoDropout):
    """Replaces the item table the rest of the system keys on."""

    def __init__(self, num_items: int, hidden_size: int = 8) -> None:
        super().__init__(num_items, hidden_size)
        self.item_embedding = nn.Embedding(num_items, hidden_size)


class PythonLoop(NoDropout):
    """Branches on tensor values in Python: runs in PyTorch, cannot be traced for ONNX."""

    def encode(self, history: Tensor) -> Tensor:
        """The item vectors, scaled by a Python number read from the data."""
        scale = 2.0 if int(history.sum().item()) % 2 else 1.0
        return self.embed_items(history) * scale


def target(cls: type) -> str:
    """The dotted path a config names ``cls`` by."""
    return f"{cls.__module__}.{cls.__qualname__}"


TINY = target(TinyRec)
#: TinyRec at test size, as a command line writes it.
TINY_MODEL = ("model=custom", f"model.target={TINY}", "+model.params={hidden_size:32,dropout:0.1}")


# ---------------------------------------------------------------- config and interface
def test_the_config_names_the_class_by_its_path_and_builds_it() -> None:
    run = federated_settings_from_overrides([*TINY_MODEL, "model.item_text=none"])
    assert run.model == CustomSRMConfig(target=TINY, params={"hidden_size": 32, "dropout": 0.1})
    model = build_model_from_config(run.model, NUM_ITEMS, MAX_LEN)
    assert type(model) is TinyRec and model.hidden_size == 32 and model.dropout.p == 0.1
    # Values are typed by the constructor's annotations: 1 for a float is a float.
    config = model_config({"name": "custom", "target": TINY, "params": {"decay": 1, "hidden_size": 8}})
    assert config.params == {"decay": 1.0, "hidden_size": 8} and isinstance(config.params["decay"], float)


def test_scores_follow_the_interface_and_streaming_matches_re_encoding() -> None:
    torch.manual_seed(0)
    model = TinyRec(NUM_ITEMS, hidden_size=8).eval()
    history = torch.tensor([[0, 0, 3, 4, 5], [0, 0, 0, 0, 7], [0, 0, 0, 0, 0]])
    with torch.no_grad():
        scores = model.score_all(history)
        assert scores.shape == (3, NUM_ITEMS + 1) and bool(torch.isinf(scores[:, 0]).all())
        # Left padding changes nothing; position t sees items up to t only.
        padded = torch.nn.functional.pad(history, (4, 0))
        assert torch.allclose(model.score_all(padded), scores, atol=1e-5)
        assert torch.allclose(model.encode(history)[:, :3], model.encode(history[:, :3]), atol=1e-6)
        # Streaming: one step per arrival gives the state re-encoding the longer history gives.
        state, hidden = model.prefill(history)
        assert torch.allclose(model.score_hidden(hidden[:2]), scores[:2], atol=1e-5)
        assert torch.equal(hidden[2], torch.zeros(8))
        arrivals = torch.tensor([6, 8, 1])
        _, hidden = model.step(state, arrivals)
        longer = torch.cat([history, arrivals.unsqueeze(1)], dim=1)
        assert torch.allclose(model.score_hidden(hidden), model.score_all(longer), atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=custom"], r"model\.target is not set: name your model class by its dotted path"),
        (["model=custom", "model.target=no_such_module.Model"], r"no module named 'no_such_module'"),
        (["model=custom", "model.target=TinyRec"], r"model\.target='TinyRec' is not a dotted path"),
        (
            ["model=custom", "model.target=test_custom_model.Nope"],
            r"module 'test_custom_model' has no attribute",
        ),
        (["model=custom", f"model.target={target(NotAnSRM)}"], r"not a subclass of .*SequentialRecommender"),
        (["model=custom", "model.target=os.path"], r"os\.path' is a module, not a subclass"),
        (["model=custom", f"model.target={target(NoEncoder)}"], r"does not implement encode"),
        (
            [*TINY_MODEL, "+model.params.depth=2"],
            r"unknown key model\.params\.depth for model\.target=test_custom_model\.TinyRec "
            r"\(its constructor takes: hidden_size, dropout, decay\)",
        ),
        ([*TINY_MODEL, "+model.params.decay=fast"], r"model\.params\.decay must be a number, got 'fast'"),
        (
            [*TINY_MODEL, "+model.params.max_len=5"],
            r"model\.params\.max_len: max_len is the run's data\.max_len",
        ),
        (
            ["model=custom", f"model.target={TINY}", "+model.width=3"],
            r"unknown key model\.width for model\.name",
        ),
        # SOLID on a user's base: a sequence encoder taking SOLID's width and dropout.
        (
            ["model=solid", f"model.base={TINY}"],
            r"unknown key model\.base_params\.num_blocks for model\.base=test_custom_model\.TinyRec .*"
            r"dropped with ~model\.base_params",
        ),
        (["model=solid", f"model.base={target(OwnScoring)}", "~model.base_params"], r"has its own score_all"),
        (
            ["model=solid", f"model.base={target(NoDropout)}", "~model.base_params"],
            r"model\.dropout=0\.5 is SOLID's trunks' dropout, but NoDropout's constructor takes no dropout",
        ),
        (
            ["model=solid", "model.base=no_such_module.Model"],
            r"model\.base='no_such_module\.Model': no module",
        ),
    ],
)
def test_a_wrong_class_or_key_is_one_clear_error(overrides: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        federated_settings_from_overrides(overrides)
    assert "Traceback" not in str(caught.value)


def test_a_model_that_breaks_the_interface_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match=r"item_embedding must be the nn\.Embedding of shape \(21, 8\)"):
        CustomSRMConfig(target=target(ReplacedTable)).build(20, MAX_LEN)
    with pytest.raises(ValueError, match=r"TinyRec\(20, \*\*\{'hidden_size': -1.*\) failed"):
        CustomSRMConfig(target=TINY, params={"hidden_size": -1}).build(20, MAX_LEN)
    # SOLID on a base without dropout runs once SOLID's dropout is 0 (nothing left unhonoured).
    run = federated_settings_from_overrides(
        ["model=solid", f"model.base={target(NoDropout)}", "~model.base_params", "model.dropout=0"]
    )
    assert run.model.base_params == CustomSRMConfig(target=target(NoDropout), params={"hidden_size": 64})
    overrides = ["model=solid", f"model.base={TINY}", "~model.base_params", "model.item_text=none"]
    model = build_model_from_config(federated_settings_from_overrides(overrides).model, 20, MAX_LEN)
    assert isinstance(model, SolidRecommender) and type(model.item_trunk) is TinyRec
    assert model.item_trunk.hidden_size == 64 and model.item_trunk.dropout.p == 0.5


@pytest.mark.slow
def test_the_command_line_prints_the_error_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lsc4rec.simulations.centralized",
            "model=custom",
            "model.target=nope_pkg.Rec",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LSC4REC_TRACEBACK": ""},
    )
    assert result.returncode != 0
    assert "error: model.target='nope_pkg.Rec': no module named 'nope_pkg'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_documented_example_is_the_model_tested_here() -> None:
    # docs/custom_model.md's one-file example (my_srm.py) holds TinyRec exactly as this file defines it.
    import inspect

    page = (REPO / "docs" / "custom_model.md").read_text()
    (example,) = re.findall(r"```python\n# my_srm\.py\n(.*?)```", page, flags=re.S)
    assert inspect.getsource(TinyRec) in example
    namespace: dict = {}
    exec(compile(example, "my_srm.py", "exec"), namespace)
    assert issubclass(namespace["TinyRec"], SequentialRecommender)


# ---------------------------------------------------------------- the whole life of the model
@pytest.fixture()
def pattern(tmp_path: Path) -> Path:
    return write_pattern_dataset(tmp_path / "pattern.txt", num_users=300, num_items=NUM_ITEMS)


@pytest.mark.slow
def test_trained_centrally_it_learns_the_pattern(pattern: Path, tmp_path: Path) -> None:
    from lsc4rec.simulations.centralized import run_centralized

    cfg = compose_config(
        [
            *TINY_MODEL,
            "data.name=pattern",
            f"data.path={pattern}",
            f"data.max_len={MAX_LEN}",
            "train.epochs=15",
            "train.batch_size=64",
            "train.lr=0.005",
            "train.patience=3",
            "train.progress=false",
            "eval.sampled_negatives=20",
        ]
    )
    summary = run_centralized(cfg, tmp_path / "run")
    full = summary["test"]["full"]
    # A random ranking of the 60 items gives HR@10 about 0.17 and NDCG@10 about 0.07.
    assert full["HR@10"] > 0.9 and full["NDCG@10"] > 0.8, full
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["model"] == {
        "name": "custom",
        "target": TINY,
        "params": {"hidden_size": 32, "dropout": 0.1},
        "item_text": "none",
    }
    state = torch.load(tmp_path / "run" / "model.pt")
    assert state["item_embedding.weight"].shape == (NUM_ITEMS + 1, 32) and "decay_logit" in state


@pytest.mark.slow
def test_exported_to_onnx_it_scores_as_pytorch_does(tmp_path: Path) -> None:
    from lsc4rec.client.onnx_runtime import OnnxModelError, OnnxScorer, export_srm

    torch.manual_seed(0)
    model = CustomSRMConfig(target=TINY, params={"hidden_size": 16}).build(NUM_ITEMS, MAX_LEN).eval()
    generator = torch.Generator().manual_seed(1)
    history = torch.randint(1, NUM_ITEMS + 1, (5, 7), generator=generator)
    for row in range(5):
        history[row, :row] = 0  # each row its own amount of left padding
    candidates = torch.randint(1, NUM_ITEMS + 1, (5, 9), generator=generator)
    with torch.no_grad():
        expected_all = model.score_all(history).numpy()
        expected_candidates = model.score_candidates(history, candidates).numpy()
    graph = OnnxScorer(export_srm(model, tmp_path / "all.onnx", MAX_LEN, kind="all"), NUM_ITEMS, "all")
    got = graph.score_all(history.numpy())
    assert np.isneginf(got[:, 0]).all()
    np.testing.assert_allclose(got[:, 1:], expected_all[:, 1:], rtol=1e-4, atol=1e-4)
    path = export_srm(model, tmp_path / "candidates.onnx", MAX_LEN, kind="candidates")
    scorer = OnnxScorer(path, NUM_ITEMS, "candidates")
    assert scorer.metadata["model"] == "TinyRec"
    np.testing.assert_allclose(
        scorer.score_candidates(history.numpy(), candidates.numpy()),
        expected_candidates,
        rtol=1e-4,
        atol=1e-4,
    )
    # A model torch.export cannot trace is a clear error, not the exporter's traceback.
    with pytest.raises(OnnxModelError, match=r"PythonLoop cannot be exported to ONNX .*runtime=torch"):
        export_srm(PythonLoop(NUM_ITEMS).eval(), tmp_path / "loop.onnx", MAX_LEN)


def _federated(data: Path, out: Path, *overrides: str) -> dict:
    """A federated run of TinyRec on the in-process grid with 2 nodes (no Ray); returns its summary."""
    from lsc4rec.server.federated_run import run_federated
    from lsc4rec.settings import federated_settings_from_run_config
    from lsc4rec.simulations.launch.inprocess import InProcessGrid

    # conftest's PATTERN_RUN, less model.dropout: TinyRec's dropout is one of its own params.
    common = [o for o in PATTERN_RUN if not o.startswith("model.")]
    words = [
        "system=base",
        *common,
        f"data.path={data}",
        f"\"output_dir='{out.parent}'\"",
        f"\"run_name='{out.name}'\"",
        *TINY_MODEL,
        *overrides,
    ]
    run_config = {"overrides": " ".join(words)}
    return run_federated(InProcessGrid(2, run_config), federated_settings_from_run_config(run_config), out)


@pytest.mark.slow
def test_trained_federated_for_two_rounds_it_learns(pattern: Path, tmp_path: Path) -> None:
    summary = _federated(pattern, tmp_path / "run", "federated.rounds=2", "federated.local_epochs=3")
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert summary["failures"] == 0 and len(rows) == 2
    # The aggregate of the two nodes' TinyRec learned: a random ranking of the 60 items gives NDCG@10 ~0.07.
    assert summary["test"]["full"]["NDCG@10"] > 0.5, summary["test"]["full"]
    state = torch.load(tmp_path / "run" / "model_last.pt")
    assert "decay_logit" in state and state["item_embedding.weight"].shape == (NUM_ITEMS + 1, 32)


@pytest.mark.slow
def test_as_solids_base_in_the_whole_system(tmp_path: Path) -> None:
    num_items = 40
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=300, num_items=num_items)
    write_pattern_text(data, num_items)
    # The whole system (`make run`'s preset) at tiny size, SOLID's trunks TinyRec instead of TTT4Rec: the
    # preset's keys for TTT4Rec go, SOLID gives TinyRec its width and dropout.
    tiny = [o for o in WHOLE_TINY if not o.startswith("model.base_params.")]
    summary = run_inprocess(
        data,
        tmp_path / "run",
        2,
        *tiny,
        f"model.base={TINY}",
        "~model.base_params",
        "federated.rounds=2",
        "federated.replay_interactions=2",
        "federated.replay_closing_round=false",
        "llm.train.epochs=3",
        system="whole",
    )
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert summary["failures"] == 0 and len(rows) == 2
    client = [row["client_evaluate"] for row in rows]
    # Time moved and TinyRec's streaming steps absorbed each arrival; the devices fused the cloud's lists.
    assert all(c["streaming-updates-per-device"] == 1.0 for c in client)
    assert all("replay-collab-NDCG@10" in c for c in client)
    # Every part acted on it: training on the cloud's lists, the codebook, MergeNet, the text part, ONNX.
    assert all(row["train"]["rerank-positions"] > 0 for row in rows)
    assert summary["codebook"]["version"] >= 1
    assert all(row["mergenet"]["mergenet-adapter-loss"] > 0 for row in rows)
    state = torch.load(tmp_path / "run" / "model_last.pt")
    assert "item_text.projection.weight" in state and "item_trunk.decay_logit" in state
    # The devices' final rankings went through ONNX Runtime: SOLID on TinyRec exported on each node.
    assert summary["device_test"]["onnx-export-seconds"] > 0
    # Learned: a random ranking of the 40 items gives NDCG@10 about 0.13.
    assert summary["test"]["full"]["NDCG@10"] > 0.6, summary["test"]["full"]
