"""Cloud knowledge on the device: slices, new items, text-initialised SRMs, text-built codebooks, MergeNet
from a text-grounded LLM, and equal-cost training budgets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import write_pattern_dataset, write_pattern_text

from lsc4rec.data import leave_one_out, load_dataset
from lsc4rec.data.readers import RawDataset
from lsc4rec.data.slices import evaluation_slices, newest_items, without_items
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.models.mergenet import MergeNetTransfer, resolve_slice
from lsc4rec.models.solid import SemanticCodebook
from lsc4rec.models.solid.item_features import text_predicted_rows
from lsc4rec.models.solid.pipeline import build_codebook, item_representations, seen_items, semantic_ids
from lsc4rec.models.solid.solid_config import SolidSettings
from lsc4rec.models.srm import build_srm
from lsc4rec.models.srm.text_init import init_item_table_from_vectors
from lsc4rec.training import TrainSettings, build_eval_sets, fit

SOLID_TEXT = SolidSettings(
    features=("text",),
    attribute_dim=8,
    quantizer="rvq",
    codebook_sizes=(10, 2),
    kmeans_iterations=30,
)


# ---------------------------------------------------------------- slices and new items
def toy_split(timestamps: list[list[float]] | None = None):
    sequences = [[1, 2, 3, 4, 5], [2, 3, 6], [1, 3, 4, 7, 2, 8], [5, 6, 7]]
    raw = RawDataset("toy", Path("toy"), [10, 11, 12, 13], sequences, timestamps=timestamps)
    return leave_one_out(raw)


def test_newest_items_follow_real_time_when_there_is_a_clock() -> None:
    # Item 6 first occurs at t=40 (user 13) and 8 at t=95; every other item by t=5.
    stamps = [[1, 2, 3, 4, 5], [10, 20, 90], [1, 2, 3, 4, 5, 95], [30, 40, 50]]
    split = toy_split(stamps)
    assert split.timestamps is not None and len(split.timestamps) == 4
    new = newest_items(split, share=0.25, seed=0)
    assert new.clock == "timestamp" and new.items == {6, 8} and new.since == 40.0
    # The subset keeps each remaining user's clock.
    assert split.subset([1]).timestamps == [[10, 20, 90]]


def test_newest_items_fall_back_to_relative_position_and_are_seeded() -> None:
    split = toy_split()
    new = newest_items(split, share=0.25, seed=0)
    # Relative first positions: 8 is only ever last (1.0), 7 first occurs at 0.6, 6 at 0.5, the rest earlier.
    assert new.clock == "position" and new.items == {7, 8} and new.since == 0.6
    assert newest_items(split, share=0.5, seed=3) == newest_items(split, share=0.5, seed=3)
    with pytest.raises(ValueError, match="share"):
        newest_items(split, share=1.5)


def test_new_items_leave_training_and_form_their_slice() -> None:
    split = toy_split()
    assert without_items([[1, 6, 2], [6, 8]], {6, 8}) == [[1, 2], []]
    new = newest_items(split, share=0.25)
    train = without_items(split.train_sequences(), new.items)
    assert new.items == {7, 8} and not {7, 8} & {i for s in train for i in s}
    slices = evaluation_slices(split, train, new)
    # Test targets: 5, 6, 8, 7 -> users 2 and 3 hold new targets.
    assert slices["new_items"] == [2, 3]
    # Counts come from the device's training data: 7 and 8 never occur there, so they are rare.
    assert {2, 3} <= set(slices["rare_targets"])
    assert sorted(slices["rare_targets"] + slices["popular_targets"]) == slices["all"]
    assert sorted(slices["cold_users"] + slices["warm_users"]) == slices["all"]


def test_movielens_timestamps_reach_the_split(movielens_100k_dir: Path) -> None:
    raw = load_dataset("ml100k", movielens_100k_dir, "movielens")
    assert raw.timestamps is not None
    assert all(
        len(t) == len(s) and t == sorted(t) for t, s in zip(raw.timestamps, raw.sequences, strict=True)
    )
    split = leave_one_out(raw)
    full = split.train_sequences(include_test=True)
    assert [len(t) for t in split.timestamps] == [len(s) for s in full]


# ---------------------------------------------------------------- text-initialised SRM
def test_text_initialised_item_table_puts_similar_text_close() -> None:
    torch.manual_seed(0)
    model = build_srm("sasrec", 6, hidden_size=8, max_len=5)
    before = model.item_embedding.weight.detach().clone()
    text = torch.zeros(7, 4)
    text[1:4] = torch.tensor([1.0, 0.1, 0.0, 0.0])  # items 1-3 share their text
    text[4:6] = torch.tensor([0.0, 0.0, 1.0, 0.2])  # items 4-5 another
    text[2, 1] = 0.3
    has_text = text.norm(dim=1) > 0
    report = init_item_table_from_vectors(model, text, has_text)
    table = model.item_embedding.weight.detach()
    assert report["items_from_text"] == 5
    assert torch.equal(table[6], before[6]) and torch.equal(table[0], before[0])
    same = torch.dist(table[1], table[3])
    other = torch.dist(table[1], table[4])
    assert same < 1e-5 < other
    # The rows keep the model's own initial spread (within the sampling noise of 5 rows).
    assert 0.3 < float(table[1:6].std()) / float(before[1:].std()) < 3.0
    with pytest.raises(ValueError, match="no item has text"):
        init_item_table_from_vectors(model, torch.zeros(7, 4), torch.zeros(7, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not match"):
        init_item_table_from_vectors(model, torch.zeros(5, 4), torch.zeros(5, dtype=torch.bool))


# ---------------------------------------------------------------- SOLID from text
def pattern_with_text(tmp_path: Path, num_items: int = 40):
    data = write_pattern_dataset(tmp_path / "p.txt", num_users=160, num_items=num_items)
    write_pattern_text(data, num_items)
    raw = load_dataset("p", data, "auto")
    return raw, leave_one_out(raw)


def block_of(split, item: int) -> int:
    """The text block of internal item ``item`` (write_pattern_text groups file ids in fours)."""
    return (split.item_map.to_raw(item) - 1) // 4


def test_text_codebook_is_deterministic_and_groups_items_by_their_text(tmp_path: Path) -> None:
    raw, split = pattern_with_text(tmp_path)
    features, report = item_representations(SOLID_TEXT, raw, split)
    assert report["text"]["items_with_text"] == 40 and features.shape == (40, 384)
    codes = semantic_ids(build_codebook(SOLID_TEXT, features, seed=1), features)
    again = semantic_ids(build_codebook(SOLID_TEXT, features, seed=1), features)
    assert torch.equal(codes, again)
    # 10 blocks of 4 items (by file id) with one text each: one level-0 code per block, a different one each.
    blocks: dict[int, set[int]] = {}
    for item in range(1, 41):
        blocks.setdefault(block_of(split, item), set()).add(int(codes[item, 0]))
    assert all(len(b) == 1 for b in blocks.values()) and len(set.union(*blocks.values())) == 10


def test_items_devices_never_saw_get_their_semantic_id_from_text(tmp_path: Path) -> None:
    raw, split = pattern_with_text(tmp_path)
    torch.manual_seed(0)
    table = torch.randn(41, 8)
    # The collaborative rows of seen items carry their block (as a trained table would).
    for item in range(1, 41):
        table[item] = (
            table[item] * 0.01
            + 3.0 * torch.nn.functional.one_hot(torch.tensor(block_of(split, item)), 10)[:8]
        )
    new = split.item_map.to_internal(6)  # new to the devices: its table row is noise
    neighbours = [split.item_map.to_internal(r) for r in (5, 7, 8)]
    seen = seen_items(split.train_sequences(), split.num_items)
    seen[new] = False
    table[new] = torch.randn(8) * 5
    joint = replace(SOLID_TEXT, features=("text", "embedding"))
    features, report = item_representations(joint, raw, split, table, seen=seen)
    assert report["embedding_rows_from_text"] == 1
    codes = semantic_ids(build_codebook(joint, features, seed=0), features)
    # The new item lands with its text neighbours although its own row said something else.
    assert {int(codes[i, 0]) for i in [new, *neighbours]} == {int(codes[neighbours[0], 0])}
    # Without the text fill the noise row stays in its representation.
    kept, _ = item_representations(replace(joint, unseen_from_text=False), raw, split, table, seen=seen)
    assert not torch.allclose(kept[new - 1], features[new - 1])


def test_ridge_fill_predicts_unseen_rows_and_keeps_seen_ones() -> None:
    text = torch.eye(4).repeat(3, 1)  # 12 items, 4 texts
    target = torch.arange(4.0).unsqueeze(1).repeat(3, 2)  # the row is a function of the text
    seen = torch.ones(12, dtype=torch.bool)
    seen[[2, 7]] = False
    noisy = target.clone()
    noisy[[2, 7]] = 99.0
    filled = text_predicted_rows(text, noisy, seen, ridge=1e-3)
    assert torch.equal(filled[seen], noisy[seen])
    assert torch.allclose(filled[[2, 7]], target[[2, 7]], atol=1e-2)
    # With every item seen nothing changes.
    assert torch.equal(text_predicted_rows(text, noisy, torch.ones(12, dtype=torch.bool)), noisy)


def test_a_synced_text_codebook_version_relabels_items(tmp_path: Path) -> None:
    raw, split = pattern_with_text(tmp_path)
    features, _ = item_representations(SOLID_TEXT, raw, split)
    codebook = build_codebook(SOLID_TEXT, features, seed=0)
    # Devices report statistics of the items they trained on (the first half, by how often).
    counts = torch.zeros(40)
    counts[:20] = 3.0
    stats = codebook.statistics(features[:20], weights=counts[:20])
    updated, report = codebook.updated(stats, seed=0)
    assert updated.version == codebook.version + 1 and len(report["dead"]) == 2
    # The new version travels as arrays and labels every item (seen or not) from its text.
    received = SemanticCodebook.from_arrays(updated.to_arrays())
    codes = semantic_ids(received, features)
    assert codes.shape == (41, 2) and torch.equal(codes, semantic_ids(updated, features))
    assert received.quantisation_error(features[:20]) <= codebook.quantisation_error(features[:20]) + 1e-6


# ---------------------------------------------------------------- MergeNet from a text-grounded LLM
def text_grounded_llm(num_items: int, seed: int = 0) -> CloudLLM:
    torch.manual_seed(seed)
    text = torch.randn(num_items + 1, 6)
    text[0] = 0.0
    return CloudLLM.from_scratch(
        num_items,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        max_len=8,
        dropout=0.0,
        seed=seed,
        text_vectors=text,
    )


def test_mergenet_reads_and_writes_the_items_whole_text_grounded_rows() -> None:
    llm = text_grounded_llm(12)
    srm = build_srm("sasrec", 12, hidden_size=16, max_len=8)
    source = resolve_slice("llm.item_embeddings", srm, llm)
    ids = llm.lm.get_input_embeddings().weight.detach()[source.rows]
    whole = ids + llm.text_rows().detach()[source.rows]
    # The source is what the LLM uses: id row + projected text (the id rows alone start at zero).
    assert torch.allclose(source.value(), whole, atol=1e-6)
    assert float(ids.abs().max()) == 0.0 and float(whole.abs().max()) > 0.0
    # Writing a value makes the whole row that value; the text part stays the text's.
    wanted = torch.randn(12, 16)
    source.assign(wanted)
    assert torch.allclose(source.value(), wanted, atol=1e-5)
    # A cloud -> device transfer from it: the adapter starts as the identity, learns from the SRM's
    # gradient, and its next transfer moves the SRM table.
    target = resolve_slice("srm.item_embeddings", srm, llm)
    transfer = MergeNetTransfer(target, source, rank=4, attention_dim=8, heads=2, num_layers=1, seed=0)
    before = target.value()
    proposed = transfer.transfer()
    assert torch.allclose(target.value(), before, atol=1e-6)
    for _ in range(3):
        srm.item_embedding.weight.grad = torch.ones_like(srm.item_embedding.weight)
        assert transfer.learn(proposed) > 0.0
        proposed = transfer.transfer()
    assert not torch.allclose(target.value(), before, atol=1e-6)


# ---------------------------------------------------------------- equal-cost budgets
def test_fit_keeps_the_best_epoch_within_each_budget(tmp_path: Path) -> None:
    from lsc4rec.data import TrainBatches

    data = write_pattern_dataset(tmp_path / "p.txt", num_users=80, num_items=20)
    split = leave_one_out(load_dataset("p", data, "auto"))
    eval_cfg = {"batch_size": 64, "exclude_history": True, "sampled_negatives": 3, "sampled_seed": 0}
    eval_cfg["full_ranking"] = True
    valid, _ = build_eval_sets(split, eval_cfg, 8)
    torch.manual_seed(0)
    model = build_srm("sasrec", split.num_items, hidden_size=16, max_len=8)
    settings = TrainSettings(epochs=5, lr=0.005, patience=10, progress=False)
    batches = TrainBatches(split.train_sequences(), 8, 32, seed=0)
    result = fit(model, batches, valid, settings, ks=(10,), epoch_budget=2, seconds_budget=1e9)
    assert result.within["epochs"].epoch <= 2
    values = [r["valid"]["full"]["NDCG@10"] for r in result.history]
    assert result.within["epochs"].valid["full"]["NDCG@10"] == max(values[:2])
    # A budget past the whole run holds the overall best.
    assert result.within["seconds"].epoch == result.best_epoch
