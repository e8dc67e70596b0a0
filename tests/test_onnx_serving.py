"""The cloud LLM served through ONNX Runtime: the same lists as the PyTorch model, history items excluded,
served by the candidate service (per-position candidates from PyTorch), refused where it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsc4rec.client.collab.candidate_client import CandidateServiceClient
from lsc4rec.models.llm.onnx_serving import OnnxCandidateSource, onnx_serving_problem
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.server.components.cloud_llm import serving_source
from lsc4rec.serving import serve
from lsc4rec.settings import SettingsError

NUM_ITEMS = 60


def tiny_llm(text: bool) -> CloudLLM:
    vectors = None
    if text:
        vectors = torch.randn(NUM_ITEMS + 1, 12, generator=torch.Generator().manual_seed(2))
        vectors[0] = 0.0
    llm = CloudLLM.from_scratch(
        NUM_ITEMS,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_len=12,
        dropout=0.0,
        seed=3,
        text_vectors=vectors,
    )
    # Spread the scores (a fresh model is nearly uniform, so near-ties would decide the order).
    with torch.no_grad():
        llm.lm.get_input_embeddings().weight.mul_(40.0)
    return llm.eval()


def histories(count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        rng.choice(np.arange(1, NUM_ITEMS + 1), size=int(rng.integers(1, 13)), replace=False).tolist()
        for _ in range(count)
    ]


@pytest.mark.parametrize("text", [False, True], ids=["id-only", "text-grounded"])
def test_onnx_lists_equal_the_pytorch_model(text: bool) -> None:
    llm = tiny_llm(text)
    source = OnnxCandidateSource(llm)
    asked = histories(40)
    for n in (1, 10, NUM_ITEMS):
        expected, actual = llm.recommend(asked, n), source.recommend(asked, n)
        np.testing.assert_array_equal(actual.items, expected.items)
        np.testing.assert_allclose(actual.scores, expected.scores, atol=1e-4)
    # Every history item is excluded; with n = the catalogue, the slots past the allowed items are empty.
    full = source.recommend(asked, NUM_ITEMS)
    for row, history in enumerate(asked):
        filled = full.items[row][full.items[row] > 0]
        assert len(filled) == NUM_ITEMS - len(history) and not set(filled) & set(history)
        assert np.isneginf(full.scores[row][len(filled) :]).all()
    # A row's list does not depend on the rows it is batched with.
    alone = np.concatenate([source.recommend([h], 10).items for h in asked])
    np.testing.assert_array_equal(alone, source.recommend(asked, 10).items)
    # Histories longer than max_len keep their most recent items, as the model does.
    long = [list(range(1, 31))]
    np.testing.assert_array_equal(source.recommend(long, 5).items, llm.recommend(long, 5).items)


def test_the_service_serves_the_onnx_source_and_its_positions() -> None:
    llm = tiny_llm(text=True)
    stored = histories(6, seed=4)
    with (
        serve(OnnxCandidateSource(llm), user_histories=stored) as running,
        CandidateServiceClient(running.target) as client,
    ):
        np.testing.assert_array_equal(
            client.recommend_for_users(range(6), 8).items, llm.recommend(stored, 8).items
        )
        positions = client.position_candidates_for_users([0, 1], 5)
        scored = client.position_candidate_scores_for_users([0, 1], 5)
    # The scores of the lists (list distillation) come from the PyTorch model too.
    assert all(scores is not None and scores.shape == items.shape for items, scores in scored)
    width = max(len(stored[0]), len(stored[1]))
    padded = torch.zeros(2, width, dtype=torch.long)
    for row, history in enumerate(stored[:2]):
        padded[row, width - len(history) :] = torch.tensor(history)
    expected = llm.position_candidates(padded, 5)
    for row, history in enumerate(stored[:2]):
        np.testing.assert_array_equal(positions[row], expected[row, width - len(history) :].numpy())


def test_runtime_choice_and_refusals() -> None:
    llm = tiny_llm(text=False)
    assert serving_source(llm, "torch", "v")[1] == "torch"
    source, runtime = serving_source(llm, "auto", "v")
    assert runtime == "onnx" and source.model_version == "v"
    semantic = CloudLLM.from_scratch(
        8,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        max_len=6,
        semantic_ids=torch.tensor([[0, 0], [0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0], [3, 1]]),
        semantic_sizes=[4, 2],
    )
    assert "several tokens" in (onnx_serving_problem(semantic) or "")
    assert serving_source(semantic, "auto", "v")[1] == "torch"
    with pytest.raises(SettingsError, match=r"collab\.service_runtime=onnx.*several tokens"):
        serving_source(semantic, "onnx", "v")
    with pytest.raises(ValueError, match="cannot be served through ONNX Runtime"):
        OnnxCandidateSource(semantic)
