"""`federated.text_started_items`: the global model's item table starts from the items' text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import PATTERN_RUN, write_pattern_dataset, write_pattern_text

from lsc4rec.server.federated_run import _data_and_model
from lsc4rec.settings import SettingsError, federated_settings_from_overrides
from lsc4rec.simulations.launch.text_fallback import text_fallback

NUM_ITEMS = 40
GROUP = 4


def _run(data: Path, *extra: str):
    return federated_settings_from_overrides(
        ["system=base", *PATTERN_RUN, f"data.path={data}", "model.hidden_size=16", *extra]
    )


def _block_margin(table: torch.Tensor) -> float:
    """Mean cosine of item rows within a text block (items sharing their words) minus across blocks."""
    rows = torch.nn.functional.normalize(table[1 : NUM_ITEMS + 1].float(), dim=1)
    cosine = rows @ rows.T
    block = torch.arange(NUM_ITEMS) // GROUP
    same = block[:, None] == block[None, :]
    off_diagonal = ~torch.eye(NUM_ITEMS, dtype=torch.bool)
    return float(cosine[same & off_diagonal].mean() - cosine[~same].mean())


def test_item_rows_start_from_the_items_text(tmp_path: Path) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=60, num_items=NUM_ITEMS)
    write_pattern_text(data, NUM_ITEMS, group=GROUP)
    torch.manual_seed(0)
    _, _, random_model, _ = _data_and_model(_run(data))
    torch.manual_seed(0)
    _, _, text_model, _ = _data_and_model(_run(data, "federated.text_started_items=true"))
    random_table = random_model.item_embedding.weight.detach()
    text_table = text_model.item_embedding.weight.detach()
    # Items that share their text start close; random rows know nothing of the blocks.
    assert _block_margin(text_table) > 0.5
    assert abs(_block_margin(random_table)) < 0.1
    # The rows keep the table's own spread, the padding row and every other weight are untouched.
    spread = float(random_table[1:].std())
    assert float(text_table[1:].std()) == pytest.approx(spread, rel=0.25)
    assert torch.equal(text_table[0], random_table[0])
    random_rest = {k: v for k, v in random_model.state_dict().items() if k != "item_embedding.weight"}
    text_rest = {k: v for k, v in text_model.state_dict().items() if k != "item_embedding.weight"}
    assert all(torch.equal(random_rest[k], text_rest[k]) for k in random_rest)


def test_without_item_text_the_start_is_refused_by_name(tmp_path: Path) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=60, num_items=NUM_ITEMS)
    with pytest.raises(ValueError, match=r"federated\.text_started_items=true needs item text"):
        _data_and_model(_run(data, "federated.text_started_items=true"))
    # At the entry point: asked for on the command line, it is refused before launching with the override to
    # drop; set by a preset, it falls back to random rows.
    run = _run(data, "federated.text_started_items=true")
    asked = ["federated.text_started_items=true"]
    with pytest.raises(SettingsError, match=r"federated\.text_started_items=true needs it: drop"):
        text_fallback(run, asked, has_text=False, dataset="pattern")
    assert text_fallback(run, [], has_text=False, dataset="pattern") == ["federated.text_started_items=false"]


def test_a_second_source_of_the_initial_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="both set the initial item table"):
        weights = f"federated.initial_weights={tmp_path}/w.pt"
        _run(tmp_path / "x.txt", "federated.text_started_items=true", weights)


@pytest.mark.slow
def test_a_federated_run_started_from_text_ranks_from_round_0(tmp_path: Path) -> None:
    # The pattern's users walk i -> i+1 and neighbours mostly share their text block: an untrained encoder on
    # a text-started table already ranks the next item well above a random start, before any device trains.
    from conftest import run_inprocess

    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=120, num_items=NUM_ITEMS)
    write_pattern_text(data, NUM_ITEMS, group=GROUP)
    quick = ("federated.rounds=1", "model.hidden_size=16", "eval.full_ranking=true", "seed=3")
    random_start = run_inprocess(data, tmp_path / "random", 2, *quick)
    text_start = run_inprocess(data, tmp_path / "text", 2, *quick, "federated.text_started_items=true")
    random_ndcg = random_start["round_0_valid"]["NDCG@10"]
    text_ndcg = text_start["round_0_valid"]["NDCG@10"]
    assert text_ndcg > 2 * random_ndcg, (text_ndcg, random_ndcg)
