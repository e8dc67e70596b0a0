"""SOLID: codebook (k-means, residual VQ, federated statistics), semantic ids, features, model, experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_pattern_dataset, write_pattern_text

from lsc4rec.codebook import CodebookStatistics
from lsc4rec.config import compose_config
from lsc4rec.data.item_text import ItemText
from lsc4rec.models.solid import (
    SemanticCodebook,
    SolidRecommender,
    disambiguate,
    kmeans,
    semantic_sequences,
    semantic_token_table,
)
from lsc4rec.models.solid.item_features import attribute_features, combine_features, text_vector_features
from lsc4rec.models.srm import ITEM_TABLE_KEY
from lsc4rec.simulations.solid import run_solid


def blobs(centres: torch.Tensor, per: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per`` points around each centre; returns points and their true cluster."""
    generator = torch.Generator().manual_seed(seed)
    points = centres.repeat_interleave(per, dim=0)
    points = points + spread * torch.randn(points.shape, generator=generator)
    return points, torch.arange(centres.shape[0]).repeat_interleave(per)


# ---------------------------------------------------------------- k-means and residual VQ
def test_kmeans_recovers_separated_clusters_and_is_deterministic() -> None:
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points, truth = blobs(centres, 50, 0.5)
    found, assignment = kmeans(points, 4, seed=3)
    # Same partition as the truth up to relabelling: each true cluster maps to exactly one code.
    pairs = {(int(t), int(a)) for t, a in zip(truth, assignment, strict=True)}
    assert len(pairs) == 4 and len({a for _, a in pairs}) == 4
    for code in range(4):
        assert torch.allclose(found[code], points[assignment == code].mean(dim=0), atol=1e-5)
    again, _ = kmeans(points, 4, seed=3)
    assert torch.equal(found, again)


def test_kmeans_rejects_bad_input_with_clear_messages() -> None:
    with pytest.raises(ValueError, match=r"k must be in 1\.\.3"):
        kmeans(torch.randn(3, 2), 4)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="non-empty"):
        kmeans(torch.zeros(0, 2), 1)


def test_residual_levels_reduce_error_and_assignment_is_greedy_nearest() -> None:
    points = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    one = SemanticCodebook.fit(points, [16], seed=0)
    two = SemanticCodebook.fit(points, [16, 8], seed=0)
    assert two.quantisation_error(points) < 0.8 * one.quantisation_error(points)
    codes = two.assign(points)
    assert codes.shape == (400, 2)
    # Brute force: level 0 nearest to x, level 1 nearest to the residual.
    d0 = torch.cdist(points, two.centroids[0]).argmin(dim=1)
    residual = points - two.centroids[0][d0]
    d1 = torch.cdist(residual, two.centroids[1]).argmin(dim=1)
    assert torch.equal(codes, torch.stack([d0, d1], dim=1))
    assert torch.allclose(two.reconstruct(codes), two.centroids[0][d0] + two.centroids[1][d1])


def test_statistics_add_up_and_an_update_is_a_lloyd_step() -> None:
    points = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    codebook = SemanticCodebook.fit(points, [6, 3], seed=0, iterations=2)
    whole = codebook.statistics(points)
    parts = codebook.statistics(points[:100]) + codebook.statistics(points[100:])
    for a, b in zip(
        whole.sums + whole.counts + whole.squares, parts.sums + parts.counts + parts.squares, strict=True
    ):
        assert torch.allclose(a, b)
    updated, report = codebook.updated(parts)
    assert updated.version == codebook.version + 1
    codes = codebook.assign(points)
    for code in range(6):
        members = points[codes[:, 0] == code]
        if len(members):
            assert torch.allclose(updated.centroids[0][code], members.mean(dim=0), atol=1e-5)
    assert report["dead"] == [0, 0]
    # Momentum keeps that share of the old centroid.
    half, _ = codebook.updated(parts, momentum=0.5)
    assert torch.allclose(
        half.centroids[0], 0.5 * codebook.centroids[0] + 0.5 * updated.centroids[0], atol=1e-5
    )
    # Weights count rows several times.
    doubled = codebook.statistics(points, weights=torch.full((300,), 2.0))
    assert torch.allclose(doubled.counts[0], 2 * whole.counts[0])


def test_dead_codes_are_reseeded_next_to_the_busiest_code() -> None:
    centroids = torch.tensor([[0.0, 0.0], [100.0, 100.0]])  # code 1 is far from every point
    codebook = SemanticCodebook([centroids])
    points = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    updated, report = codebook.updated(codebook.statistics(points), reseed_scale=0.5)
    assert report == {"dead": [1], "reseeded": [1]}
    assert float(updated.centroids[0][1].norm()) < 3.0  # moved next to the data
    # After the re-seed both codes take points.
    assert updated.usage(updated.assign(points))["dead_codes"] == [0]


def test_statistics_of_another_shape_are_refused() -> None:
    codebook = SemanticCodebook([torch.randn(4, 3)])
    other = CodebookStatistics.zeros_like(SemanticCodebook([torch.randn(5, 3)]))
    with pytest.raises(ValueError, match="do not match the codebook"):
        codebook.updated(other)
    with pytest.raises(ValueError, match="different shapes"):
        _ = CodebookStatistics.zeros_like(codebook) + other
    with pytest.raises(ValueError, match="dim 2 but the codebook has 3"):
        codebook.assign(torch.randn(3, 2))


def test_codebook_arrays_round_trip_and_usage() -> None:
    codebook = SemanticCodebook([torch.randn(4, 3), torch.randn(2, 3)], version=7)
    back = SemanticCodebook.from_arrays(codebook.to_arrays())
    assert back.version == 7 and all(
        torch.equal(a, b) for a, b in zip(back.centroids, codebook.centroids, strict=True)
    )
    usage = codebook.usage(torch.tensor([[0, 0], [1, 0], [2, 1], [3, 1]]))
    assert usage == {"perplexity": [4.0, 2.0], "dead_codes": [0, 0]}
    with pytest.raises(ValueError, match="version"):
        SemanticCodebook.from_arrays({"level_0": torch.randn(2, 2)})


# ---------------------------------------------------------------- semantic ids
def test_semantic_tokens_fold_code_prefixes() -> None:
    codes = torch.tensor([[0, 0], [0, 1], [2, 1], [2, 0], [1, 1]])  # row 0 = padding
    table = semantic_token_table(codes, [3, 2], prefix_levels=1)
    assert table.tolist() == [0, 1, 3, 3, 2]
    table2 = semantic_token_table(codes, [3, 2], prefix_levels=2)
    assert table2.tolist() == [0, 2, 6, 5, 4]
    assert semantic_sequences([[1, 2, 3], [4]], table) == [[1, 3, 3], [2]]
    with pytest.raises(ValueError, match=r"codes must lie in 0\.\.1"):
        semantic_token_table(torch.tensor([[0, 0], [0, 2]]), [3, 2], 1)
    with pytest.raises(ValueError, match="trunk_levels"):
        semantic_token_table(codes, [3, 2], 3)


def test_disambiguate_makes_every_item_unique() -> None:
    codes = torch.tensor([[0, 0], [1, 1], [1, 1], [0, 2], [1, 1]])
    unique = disambiguate(codes)
    assert unique[1:].tolist() == [[1, 1, 0], [1, 1, 1], [0, 2, 0], [1, 1, 2]]
    assert len({tuple(r) for r in unique[1:].tolist()}) == 4


# ---------------------------------------------------------------- item representations
def test_attribute_features_group_items_by_attribute_and_count_missing() -> None:
    attributes = {1: [5, 6], 2: [5, 6], 3: [7], 4: [7, 7]}
    features, report = attribute_features(attributes, num_items=5, dim=4)
    assert features.shape == (5, 4)
    assert torch.allclose(features[0], features[1], atol=1e-5)
    assert torch.allclose(features[2], features[3], atol=1e-5)  # duplicates count once
    assert float((features[0] - features[2]).norm()) > 0.5
    assert torch.equal(features[4], torch.zeros(4))
    assert report == {"items_with_attributes": 4, "items_without_attributes": 1, "attributes": 3}
    with pytest.raises(ValueError, match=r"item 9, outside 1\.\.5"):
        attribute_features({9: [1]}, num_items=5)


def titles(**by_item: str) -> dict[int, ItemText]:
    return {int(k[1:]): ItemText(title=v) for k, v in by_item.items()}


def test_text_features_mean_pool_a_local_model(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "toy", "story", "mascara", "red"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).eval()
    model.save_pretrained(tmp_path)
    features, report = text_vector_features(
        titles(i1="toy story", i3="red mascara"), num_items=3, model=str(tmp_path), fields=("title",)
    )
    assert report == {"items_with_text": 2, "items_without_text": 1, "fields": ["title"]}
    assert torch.equal(features[1], torch.zeros(16))
    assert torch.allclose(features[[0, 2]].norm(dim=1), torch.ones(2), atol=1e-5)
    tokens = BertTokenizerFast.from_pretrained(tmp_path)(["toy story"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**tokens).last_hidden_state.mean(dim=1)
    assert torch.allclose(features[0], torch.nn.functional.normalize(expected, dim=1)[0], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text_vector_features(titles(i1="x"), 1, tmp_path / "missing")
    # Other weights in the same folder are a different encoder: the cache never serves the old vectors.
    torch.manual_seed(1)
    BertModel(model.config).save_pretrained(tmp_path)
    again, _ = text_vector_features(titles(i1="toy story"), 1, tmp_path, fields=("title",))
    assert not torch.allclose(again[0], features[0])


def test_combined_blocks_have_equal_scale() -> None:
    combined = combine_features({"a": torch.full((3, 2), 10.0), "b": torch.full((3, 4), 0.1)})
    assert combined.shape == (3, 6)
    assert torch.allclose(combined[:, :2].norm(dim=1), combined[:, 2:].norm(dim=1))
    with pytest.raises(ValueError, match="disagree on the number of items"):
        combine_features({"a": torch.zeros(3, 2), "b": torch.zeros(4, 2)})


# ---------------------------------------------------------------- dual parameter model
NUM_ITEMS = 30


def solid_model(base: str = "sasrec", **flags) -> SolidRecommender:
    torch.manual_seed(0)
    params = {"num_blocks": 1, "num_heads": 2} if base == "sasrec" else {}
    model = SolidRecommender(
        NUM_ITEMS,
        base=base,
        hidden_size=8,
        dropout=0.0,
        codebook_sizes=[4, 3],
        trunk_levels=1,
        meta_size=4,
        base_params=params,
        max_len=10,
        **flags,
    )
    codes = torch.zeros(NUM_ITEMS + 1, 2, dtype=torch.long)
    codes[1:, 0] = torch.arange(NUM_ITEMS) % 4
    codes[1:, 1] = torch.arange(NUM_ITEMS) % 3
    model.set_semantic_ids(codes)
    return model.eval()


@pytest.mark.parametrize("base", ["sasrec", "gru4rec"])
def test_solid_is_causal_ignores_padding_and_scores_consistently(base: str) -> None:
    model = solid_model(base)
    history = torch.tensor([[0, 0, 3, 7, 9, 2], [1, 5, 8, 2, 4, 6]])
    out = model.encode(history)
    changed = history.clone()
    changed[:, -1] = torch.tensor([11, 12])
    assert torch.allclose(model.encode(changed)[:, :-1], out[:, :-1], atol=1e-6)
    assert torch.equal(out[0, :2], torch.zeros(2, 8))
    longer = torch.cat([torch.zeros(2, 3, dtype=torch.long), history], dim=1)
    assert torch.allclose(model.encode(longer)[:, 3:], out, atol=1e-5)
    full = model.score_all(history)
    assert torch.allclose(full[:, 1:], (out[:, -1] @ model.item_embedding.weight.t())[:, 1:], atol=1e-5)
    candidates = torch.tensor([[3, 0, 17], [1, 2, 30]])
    picked = model.score_candidates(history, candidates)
    assert torch.allclose(picked[:, [0, 2]], full.gather(1, candidates)[:, [0, 2]], atol=1e-5)
    assert torch.isinf(picked[0, 1])


def test_solid_registers_the_item_table_once_and_gradients_reach_every_part() -> None:
    model = solid_model().train()
    keys = [k for k in model.state_dict() if k.endswith(ITEM_TABLE_KEY)]
    assert keys == [ITEM_TABLE_KEY, f"semantic_trunk.{ITEM_TABLE_KEY}"]
    history = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    loss = model.score_all(history)[:, 1:].logsumexp(dim=1).sum() + model.auxiliary_loss(history)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    # SASRec's position rows never used here are the only parameters without gradient.
    assert all("position_embedding" in n for n in missing), missing


def test_ablations_build_the_parts_they_say() -> None:
    full = solid_model()
    assert hasattr(full, "semantic_generators") and full.auxiliary_loss(torch.tensor([[1, 2]])) is not None
    no_codebook = solid_model(use_codebook=False)
    assert (
        not hasattr(no_codebook, "semantic_trunk") and no_codebook.auxiliary_loss(torch.tensor([[1]])) is None
    )
    no_trunk = solid_model(semantic_trunk=False)
    assert hasattr(no_trunk, "semantic_trunk") and not hasattr(no_trunk, "semantic_generators")
    static = solid_model(generation=False)
    assert hasattr(static, "static_layers") and not hasattr(static, "item_generators")


def test_item_generated_parameters_are_clipped() -> None:
    # With the item generator's output blown up, the item part stays within ±clip: the result is the same
    # as with the item generators' bias pinned at +clip/-clip by sign.
    model = solid_model(semantic_trunk=False, clip=0.01)
    history = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        for generator in model.item_generators:
            generator.weight.weight.zero_()
            generator.bias.weight.zero_()
            generator.weight.bias.copy_(torch.sign(torch.randn_like(generator.weight.bias)) * 1e4)
            generator.bias.bias.fill_(-1e4)
        s = model.item_trunk.encode(history)[0, -1]
        h = s
        for index, generator in enumerate(model.item_generators):
            weight = (torch.sign(generator.weight.bias) * 0.01).view(8, 8)
            h = weight @ (h if index == 0 else torch.tanh(h)) - 0.01
        assert torch.allclose(model.encode(history)[0, -1], s + h, atol=1e-5)


def test_solid_needs_semantic_ids_of_the_right_size() -> None:
    model = SolidRecommender(NUM_ITEMS, hidden_size=8, codebook_sizes=[4], base_params={"num_heads": 2})
    with pytest.raises(RuntimeError, match="no semantic ids yet"):
        model.score_all(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="cover 5 items but the model has 30"):
        model.set_semantic_ids(torch.zeros(6, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"model\.base must be one of"):
        SolidRecommender(NUM_ITEMS, base="din")


def test_vq_loss_pulls_item_embeddings_to_their_semantic_tokens() -> None:
    model = solid_model(vq_weight=1.0).train()
    history = torch.arange(1, NUM_ITEMS + 1).view(3, 10)
    before = float(model.auxiliary_loss(history).detach())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        model.auxiliary_loss(history).backward()
        optimizer.step()
    assert float(model.auxiliary_loss(history)) < 0.1 * before


# ---------------------------------------------------------------- the experiment
@pytest.mark.slow
def test_solid_experiment_learns_and_reports_every_variant(tmp_path: Path) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=200, num_items=40)
    write_pattern_text(data, 40)
    # Attributes beside the sequence file (the old codebook's source): ten groups of four consecutive items.
    (tmp_path / "pattern_item2attributes.json").write_text(
        json.dumps({str(i): [(i - 1) // 4, 100 + i % 2] for i in range(1, 41)})
    )
    cfg = compose_config(
        [
            "data.name=pattern",
            f"data.path={data}",
            "data.max_len=10",
            "model.hidden_size=16",
            "model.dropout=0.1",
            "model.base_params.num_blocks=1",
            "solid.features=[text,embedding]",
            "solid.codebook_sizes=[8,2]",
            "solid.attribute_dim=8",
            "train.epochs=12",
            "train.lr=0.005",
            "train.batch_size=64",
            "train.patience=3",
            "train.progress=false",
            "eval.sampled_negatives=20",
            "text.progress=false",
            "new_item_share=0.05",
        ],
        config_name="solid_run",
    )
    result = run_solid(cfg, tmp_path / "run")
    variants = {"base", "text_srm", "solid", "solid_text_init", "solid_old_codebook", "no_codebook"}
    ablations = {"no_semantic_trunk", "no_generation", "solid_semantic_scores"}
    assert set(result["variants"]) == variants | ablations
    # The pattern is fully learnable; random ranking over 40 items gives HR@10 ~ 0.25.
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    runs = metrics["runs"]
    assert runs["solid"]["test"]["all"]["HR@10"] > 0.9, result
    assert runs["base"]["test"]["all"]["HR@10"] > 0.9, result
    assert result["features"] == {"main": ["text", "embedding"], "old": ["embedding", "attributes"]}
    assert (
        result["codebook"]["main"]["sizes"] == [8, 2] and len(result["codebook"]["main"]["perplexity"]) == 2
    )
    # 2 new items (5% of 40) are held out of training; the text fill gave them their codebook rows.
    assert result["new_items"]["items"] == 2
    assert metrics["codebook"]["main"]["embedding_rows_from_text"] == 2
    assert "embedding_rows_from_text" not in metrics["codebook"]["old"]
    assert metrics["codebook"]["main"]["text"]["items_with_text"] == 40
    assert runs["solid_text_init"]["text_init"]["items_from_text"] == 40
    for name in variants - {"base"}:
        assert runs[name]["equal_epochs"]["epoch"] <= runs["base"]["epochs_run"]
    assert result["cost"]["solid"]["bytes_per_round"] > 4 * result["cost"]["solid"]["parameters"]
    assert all("new_items" in run["test"] and "sampled" not in run["test"] for run in runs.values())
    assert metrics["status"] == "completed"
    assert (tmp_path / "run" / "solid.png").stat().st_size > 1000


def test_model_solid_runs_in_the_centralized_entry_point(tmp_path: Path) -> None:
    from lsc4rec.simulations.centralized import run_centralized

    data = write_pattern_dataset(tmp_path / "p.txt", num_users=120, num_items=24)
    (tmp_path / "p_item2attributes.json").write_text(json.dumps({str(i): [i % 5] for i in range(1, 25)}))
    cfg = compose_config(
        [
            "model=solid",
            "data.name=p",
            f"data.path={data}",
            "data.max_len=8",
            "model.hidden_size=8",
            "model.base_params.num_heads=2",
            "solid.quantizer=kmeans",
            "solid.codebook_sizes=[5]",
            "solid.attribute_dim=4",
            "train.epochs=2",
            "train.progress=false",
            "eval.sampled_negatives=10",
        ]
    )
    summary = run_centralized(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    codebook = metrics["solid"]["codebook"]
    # Five attribute groups, five codes: every group gets its own code.
    assert codebook["sizes"] == [5] and codebook["dead_codes"] == [0]
    assert codebook["distinct_semantic_ids"] == 5 and codebook["perplexity"][0] > 4.5
    assert summary["test"]["full"]["NDCG@10"] >= 0.0


def test_solid_config_errors_name_the_key(tmp_path: Path) -> None:
    from lsc4rec.models.solid.pipeline import build_codebook, load_item_table
    from lsc4rec.models.solid.solid_config import SolidSettings

    with pytest.raises(ValueError, match="kmeans takes one level"):
        build_codebook(
            SolidSettings(quantizer="kmeans", codebook_sizes=(4, 2), kmeans_iterations=5), torch.randn(9, 2)
        )
    with pytest.raises(ValueError, match=r"solid\.quantizer must be one of"):
        build_codebook(
            SolidSettings(quantizer="pq", codebook_sizes=(4,), kmeans_iterations=5), torch.randn(9, 2)
        )
    with pytest.raises(FileNotFoundError, match=r"solid\.embedding_source"):
        load_item_table(str(tmp_path / "none.pt"))
    torch.save({"other": torch.zeros(2)}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"holds no .item_embedding\.weight."):
        load_item_table(str(tmp_path / "m.pt"))


@pytest.mark.slow
def test_cloud_llm_speaks_semantic_ids_and_learns(tmp_path: Path) -> None:
    import random

    from lsc4rec.data import leave_one_out, load_dataset
    from lsc4rec.models.llm.llm_training import LLMTrainSettings, evaluate_llm, fit_llm
    from lsc4rec.models.llm.pretrained import build_llm
    from lsc4rec.models.llm.recommender import CloudLLM
    from lsc4rec.models.solid.pipeline import llm_semantic_ids
    from lsc4rec.models.solid.solid_config import SolidSettings
    from lsc4rec.settings import llm_settings, typed_section

    data = write_pattern_dataset(tmp_path / "s.txt", num_users=200, num_items=30)
    (tmp_path / "s_item2attributes.json").write_text(json.dumps({str(i): [i % 6] for i in range(1, 31)}))
    raw = load_dataset("s", data)
    split = leave_one_out(raw)
    cfg = compose_config(["solid.codebook_sizes=[6]", "solid.quantizer=kmeans", "solid.attribute_dim=6"])
    ids, sizes = llm_semantic_ids(typed_section(cfg.solid, SolidSettings, "solid"), raw, split)
    # 6 attribute groups of 5 items: level 0 names the group, the extra level the item within it.
    assert sizes == [6, 5] and len({tuple(r) for r in ids[1:].tolist()}) == 30
    llm_cfg = llm_settings(
        {
            **compose_config().llm,
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 2,
            "intermediate_size": 64,
            "max_len": 10,
            "dropout": 0.0,
            "item_tokens": "semantic",
        }
    )
    with pytest.raises(ValueError, match="needs the SOLID semantic ids"):
        build_llm(llm_cfg, split.num_items)
    llm = build_llm(llm_cfg, split.num_items, semantic_ids=ids, semantic_sizes=sizes)
    assert llm.tokenizer.depth == 2 and llm.tokenizer.vocab_size == 3 + 6 + 5
    settings = LLMTrainSettings(epochs=25, batch_size=32, lr=5e-3, warmup_steps=5, patience=4, progress=False)
    result = fit_llm(llm, split.train_sequences(), split.valid_histories(), split.valid_targets, settings)
    metrics = evaluate_llm(llm, split.test_histories(), split.test_targets, candidates=10)
    # Random lists of 10 out of 30 items hold the target a third of the time; the walk is learnable.
    assert metrics["Recall@10"] > 0.8 and result.best_valid["NDCG@10"] > 0.5, metrics
    histories = [random.Random(s).sample(range(1, 31), 4) for s in range(20)]
    lists = llm.recommend(histories, 8)
    for history, items in zip(histories, lists.items, strict=True):
        assert len(set(items.tolist())) == 8 and not set(items.tolist()) & set(history)
        assert all(1 <= i <= 30 for i in items.tolist())
    llm.save_pretrained(tmp_path / "llm")
    assert CloudLLM.from_pretrained(tmp_path / "llm").tokenizer.depth == 2


def test_semantic_scores_put_the_code_into_every_items_score() -> None:
    torch.manual_seed(0)
    model = SolidRecommender(12, hidden_size=8, codebook_sizes=[3], semantic_scores=True).eval()
    # Row 0 is padding; items 7, 8, 9 and 12 share code 2.
    codes = torch.tensor([[0], [0], [0], [0], [1], [1], [1], [2], [2], [2], [0], [1], [2]])
    model.set_semantic_ids(codes)
    history = torch.tensor([[0, 0, 1, 4]])  # codes 0 and 1 only
    before = model.score_all(history)
    with torch.no_grad():
        # Code 2's row of the semantic table: not read by this history, so the user vector stays put.
        model.semantic_trunk.item_embedding.weight[int(model.semantic_tokens[7])] += 0.5
    after = model.score_all(history)
    moved = ((after - before).abs() > 1e-6).squeeze(0).nonzero().flatten().tolist()
    assert moved == [7, 8, 9, 12]
    plain = SolidRecommender(12, hidden_size=8, codebook_sizes=[3]).eval()
    plain.set_semantic_ids(codes)
    assert plain.item_table() is plain.item_embedding.weight


def test_a_saved_model_is_scored_again_with_the_semantic_ids_saved_beside_it(tmp_path: Path) -> None:
    from lsc4rec.models.solid.saved_ids import load_semantic_ids, save_semantic_ids, semantic_ids_path

    torch.manual_seed(0)
    codes = torch.tensor([[0], [0], [0], [0], [1], [1], [1], [2], [2], [2], [0], [1], [2]])
    model = SolidRecommender(12, hidden_size=8, codebook_sizes=[3], semantic_scores=True).eval()
    model.set_semantic_ids(codes)
    weights = tmp_path / "model_last.pt"
    torch.save(model.state_dict(), weights)
    save_semantic_ids(model.semantic_codes, weights)
    assert semantic_ids_path(weights) == tmp_path / "model_last.semantic_ids.pt"
    history = torch.tensor([[0, 0, 1, 4]])
    again = SolidRecommender(12, hidden_size=8, codebook_sizes=[3], semantic_scores=True).eval()
    again.load_state_dict(torch.load(weights, weights_only=True))
    load_semantic_ids(again, weights)
    torch.testing.assert_close(again.score_all(history), model.score_all(history))
    # Other ids score differently: the ids, not only the weights, decide the scores.
    other = SolidRecommender(12, hidden_size=8, codebook_sizes=[3], semantic_scores=True).eval()
    other.load_state_dict(torch.load(weights, weights_only=True))
    other.set_semantic_ids(torch.roll(codes, 1, dims=0).clamp(max=2) * (torch.arange(13) > 0)[:, None])
    assert not torch.allclose(other.score_all(history), model.score_all(history))
    save_semantic_ids(None, tmp_path / "plain.pt")
    assert not (tmp_path / "plain.semantic_ids.pt").exists()
    with pytest.raises(FileNotFoundError, match=r"plain\.semantic_ids\.pt is missing"):
        load_semantic_ids(again, tmp_path / "plain.pt")
