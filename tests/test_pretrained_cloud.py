"""The pretrained cloud on a GPU: the compact payload, the standalone fine-tuning script, the lists loader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_pattern_dataset

from lsc4rec.config import compose_config
from lsc4rec.data import pad_left
from lsc4rec.models.llm import gpu_finetune as gpu
from lsc4rec.models.llm.gpu_payload import rotary_row_order, split_q4_1_blocks
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.simulations.pretrained_cloud import (
    PrecomputedCloud,
    export_lists,
    load_lists,
    run_pretrained_cloud,
)
from lsc4rec.simulations.request_curve import run_request_curve


def random_q4_1_bytes(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Raw GGUF Q4_1 bytes ``[rows, cols / 32 * 20]``: fp16 scale, fp16 min, 16 bytes of codes per block."""
    rng = np.random.default_rng(seed)
    blocks = cols // 32
    scale = rng.uniform(1e-4, 0.05, (rows, blocks)).astype(np.float16)
    lowest = rng.uniform(-0.5, 0.0, (rows, blocks)).astype(np.float16)
    codes = rng.integers(0, 256, (rows, blocks, 16), dtype=np.uint8)
    raw = np.concatenate([scale[..., None].view(np.uint8), lowest[..., None].view(np.uint8), codes], axis=-1)
    return raw.reshape(rows, blocks * 20)


def reference_dequantize(raw: np.ndarray, rows: int) -> np.ndarray:
    """``gguf.quants``' Q4_1 formula, written out: ``scale * code + min`` in float32, low nibbles first."""
    blocks = raw.reshape(-1, 20)
    scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    lowest = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    codes = blocks[:, 4:]
    values = np.concatenate([codes & 0x0F, codes >> 4], axis=1).astype(np.float32)
    return (scale * values + lowest).reshape(rows, -1)


def test_q4_1_blocks_reassemble_the_dequantised_weights_exactly() -> None:
    raw = random_q4_1_bytes(48, 96)
    scale, lowest, codes = split_q4_1_blocks(raw, 48)
    assert scale.dtype == np.float16 and codes.shape == (48, 3, 16)
    weights = gpu.dequantize_q4_1(torch.from_numpy(scale), torch.from_numpy(lowest), torch.from_numpy(codes))
    expected = reference_dequantize(raw, 48)
    assert np.array_equal(weights.numpy(), expected)  # bit for bit
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
    except ImportError:  # the optional wheel: the written-out formula above is the check
        return
    assert np.array_equal(weights.numpy(), dequantize(raw, GGMLQuantizationType.Q4_1))


def test_rotary_row_order_inverts_llama_cpp_permutation() -> None:
    # llama.cpp's converter permutes q/k rows for its rotary layout; transformers' loader undoes it.
    rows, heads = 24, 3
    weight = np.arange(rows * 4).reshape(rows, 4)
    permuted = weight.reshape(heads, 2, rows // heads // 2, 4).swapaxes(1, 2).reshape(rows, 4)
    assert np.array_equal(permuted[rotary_row_order(rows, heads)], weight)


def test_quantize_round_trips_within_one_step() -> None:
    weight = np.random.default_rng(1).normal(0, 0.1, (8, 64)).astype(np.float32)
    scale, lowest, codes = gpu.quantize_q4_1(weight)
    back = gpu.dequantize_q4_1(torch.from_numpy(scale), torch.from_numpy(lowest), torch.from_numpy(codes))
    step = np.repeat(scale.astype(np.float32), 32, axis=1)
    assert np.all(np.abs(back.numpy() - weight) <= step * 0.5 + 1e-3)


def test_payload_parts_merge_to_the_whole_and_refuse_a_missing_part(tmp_path: Path) -> None:
    parts = gpu.tiny_payload(tmp_path)
    payload = gpu.read_payload(parts)
    state = gpu.layer_state(payload)
    for layer in range(payload.num_layers):
        stored = [
            torch.from_numpy(payload.layers[f"{layer}.self_attn.q_proj.{f}"])
            for f in ("scale", "min", "codes")
        ]
        assert torch.equal(state[f"layers.{layer}.self_attn.q_proj.weight"], gpu.dequantize_q4_1(*stored))
    with pytest.raises(ValueError, match=r"layer 1 self_attn\.q_proj\.scale is in no part"):
        gpu.read_payload(parts[:1])
    with pytest.raises(ValueError, match=r"meta\.json: missing"):
        gpu.read_payload([tmp_path / "nowhere"])
    meta = json.loads((parts[1] / gpu.META).read_text())
    meta["llama_config"]["hidden_size"] = 32
    (parts[1] / gpu.META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="llama_config differs"):
        gpu.read_payload(parts)


def test_the_gpu_script_runs_end_to_end_on_the_cpu_and_its_lists_load(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    log = gpu.smoke(tmp_path / "out", device_name="cpu", budget_s=20.0)
    assert log["probe_max_abs_diff"] == 0.0  # the same model on the same device
    assert log["selected"]["config"] in ("smoke-a", "smoke-b")
    assert {r["config"] for r in log["epochs"]} == {"smoke-a", "smoke-b"}
    assert all(0.0 <= r["valid"]["NDCG@10"] <= 1.0 for r in log["epochs"])
    cloud = load_lists(tmp_path / "out", num_items=300)
    assert cloud.k == 20 and cloud.max_len == 8
    payload = gpu.read_payload(gpu.tiny_payload(tmp_path / "again"))
    history = gpu.ragged(payload.data, "score")[3].tolist()
    items, scores = cloud.recommend_tensor(pad_left([history], 8), 10)
    assert items.shape == (1, 10) and not set(items[0].tolist()) & set(history)
    full = cloud.item_scores(pad_left([history], 8))
    assert torch.equal(full[0, items[0]], scores[0]) and int(torch.isfinite(full).sum()) == 20


@pytest.fixture()
def exported(tmp_path: Path) -> tuple[Path, CloudLLM, list[list[int]]]:
    """Lists of a tiny scratch CloudLLM for a few histories, in the device format."""
    llm = CloudLLM.from_scratch(
        40, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_len=6
    )
    histories = [[], [1], [3, 4, 5], [2, 9, 11, 12, 13, 14, 15, 16], [7, 7, 8]]
    export_lists(llm.eval(), histories, tmp_path / "lists", k=12)
    return tmp_path / "lists", llm, histories


def test_exported_lists_answer_as_the_model_does(exported: tuple[Path, CloudLLM, list[list[int]]]) -> None:
    folder, llm, histories = exported
    cloud = load_lists(folder, num_items=40)
    padded = pad_left(histories, 6)
    items, scores = cloud.recommend_tensor(padded, 12)
    expected_items, expected_scores = llm.recommend_tensor(padded, 12)
    assert torch.equal(items, expected_items) and torch.equal(scores, expected_scores)
    # The full ranking alone keeps the model's order inside the list; the rest of the catalogue is -inf.
    full = cloud.item_scores(padded)
    model_full = llm.item_scores(padded)
    for row in range(len(histories)):
        listed = items[row]
        assert torch.equal(full[row, listed], model_full[row, listed])
    with pytest.raises(ValueError, match="has no precomputed list"):
        cloud.recommend_tensor(pad_left([[1, 2]], 6), 5)
    with pytest.raises(ValueError, match="13 candidates asked for"):
        cloud.recommend_tensor(padded, 13)


def _rewrite_chunk(folder: Path, **changes: np.ndarray) -> None:
    path = folder / "lists_0.npz"
    with np.load(path) as stored:
        fields = {k: stored[k] for k in stored.files}
    fields.update(changes)
    for name in [k for k, v in changes.items() if v is None]:
        del fields[name]
    np.savez(path, **fields)


def _rewrite_index(folder: Path, **changes: object) -> None:
    index = json.loads((folder / "lists.json").read_text())
    index.update(changes)
    for name in [k for k, v in changes.items() if v is None]:
        del index[name]
    (folder / "lists.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda f: (f / "lists.json").unlink(), r"lists.json: missing"),
        (lambda f: (f / "lists.json").write_text("{"), r"lists.json: not JSON"),
        (lambda f: _rewrite_index(f, k=None), r"lists.json: field 'k' is missing"),
        (lambda f: _rewrite_index(f, rows="5"), r"lists.json: field 'rows' must be int"),
        (lambda f: _rewrite_index(f, format=2), r"lists.json: field 'format' is 2"),
        (
            lambda f: _rewrite_index(f, num_items=41),
            r"lists.json: field 'num_items' is 41; the dataset has 40",
        ),
        (lambda f: _rewrite_index(f, rows=6), r"lists.json: field 'rows' is 6, the chunks hold 5"),
        (lambda f: _rewrite_index(f, chunks=["../x.npz"]), r"lists.json: field 'chunks' holds '../x.npz'"),
        (
            lambda f: (f / "lists_0.npz").unlink(),
            r"lists_0.npz: missing \(named in lists.json field 'chunks'\)",
        ),
        (lambda f: (f / "lists_0.npz").write_bytes(b"not a zip"), r"lists_0.npz: not a readable .npz"),
        (lambda f: _rewrite_chunk(f, scores=None), r"lists_0.npz: field 'scores' is missing"),
        (
            lambda f: _rewrite_chunk(f, items=np.zeros((5, 3), dtype=np.int32)),
            r"lists_0.npz: field 'items' is \(5, 3\), expected \(5, 12\)",
        ),
        (
            lambda f: _rewrite_chunk(f, items=np.full((5, 12), 41, dtype=np.int32)),
            r"lists_0.npz: field 'items' holds an id outside 0..40",
        ),
        (
            lambda f: _rewrite_chunk(f, items=np.ones((5, 12), dtype=np.float32)),
            r"lists_0.npz: field 'items' has dtype float32",
        ),
        (
            lambda f: _rewrite_chunk(f, scores=np.tile(np.arange(12, dtype=np.float32), (5, 1))),
            r"lists_0.npz: field 'scores' is not non-increasing",
        ),
        (
            lambda f: _rewrite_chunk(f, scores=np.full((5, 12), np.nan, dtype=np.float32)),
            r"lists_0.npz: field 'scores' is not finite",
        ),
        (
            lambda f: _rewrite_chunk(f, histories_offsets=np.array([0, 1, 2], dtype=np.int64)),
            r"lists_0.npz: field 'histories_offsets' must rise from 0 to len\(histories_flat\)",
        ),
        (
            lambda f: _rewrite_chunk(f, histories_flat=np.full(13, 99, dtype=np.int32)),
            r"lists_0.npz: field 'histories_flat' holds an item id outside 1..40",
        ),
    ],
)
def test_the_loader_refuses_bad_files_naming_the_file_and_field(
    exported: tuple[Path, CloudLLM, list[list[int]]], corrupt, message: str
) -> None:
    folder = exported[0]
    corrupt(folder)
    with pytest.raises(ValueError, match=message):
        load_lists(folder, num_items=40)


def test_the_loader_refuses_a_list_holding_its_own_history(
    exported: tuple[Path, CloudLLM, list[list[int]]],
) -> None:
    folder = exported[0]
    with np.load(folder / "lists_0.npz") as stored:
        items, offsets, flat = stored["items"].copy(), stored["histories_offsets"], stored["histories_flat"]
    row = 2
    history_item = int(flat[offsets[row]])
    items[row, -1] = history_item if history_item not in items[row] else items[row, -1]
    _rewrite_chunk(folder, items=items)
    with pytest.raises(ValueError, match=r"field 'items' row 2 lists an item of its own history"):
        load_lists(folder)


def pattern_config(tmp_path: Path, extra: list[str], config_name: str = "config"):
    """The request curve on a 300-user walk over 60 items with small models (as test_collaboration's)."""
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=300, num_items=60)
    common = [
        "data.name=pattern",
        f"data.path={data}",
        "data.max_len=10",
        "llm.max_len=10",
        "llm.train.progress=false",
        "model.hidden_size=32",
        "train.lr=0.005",
        "train.batch_size=32",
        "train.progress=false",
        "train.epochs=4",
        "eval.sampled_negatives=20",
        "collab.candidates=10",
        "collab.device_candidates=10",
        "collab.srm_training=standard",
        "request.score=learned",
        "request.compare=[]",
        "threads=1",
    ]
    return compose_config([*common, *extra], config_name)


def test_precomputed_lists_reproduce_the_request_curve_of_their_model(tmp_path: Path) -> None:
    scratch = pattern_config(
        tmp_path,
        [
            "llm.hidden_size=32",
            "llm.intermediate_size=64",
            "llm.num_layers=1",
            "llm.num_heads=2",
            "llm.train.lr=0.005",
            "llm.train.batch_size=32",
            "llm.train.epochs=3",
        ],
    )
    direct = run_request_curve(scratch, tmp_path / "direct")
    llm = CloudLLM.from_pretrained(tmp_path / "direct" / "llm").eval()
    from lsc4rec.settings import REQUEST_CURVE_IGNORES, RequestCurveSettings, typed_run
    from lsc4rec.simulations.pretrained_cloud import request_curve_histories

    # 20 per list for 10 candidates: the cloud alone's @10 stays exact after the seen items leave a list.
    run = typed_run(scratch, RequestCurveSettings, REQUEST_CURVE_IGNORES)
    export_lists(llm, request_curve_histories(run), tmp_path / "lists", k=20)
    cfg = pattern_config(
        tmp_path,
        [f"llm.lists_path={tmp_path / 'lists'}", f"collab.srm_path={tmp_path / 'direct' / 'srm.pt'}"],
        "pretrained_cloud",
    )
    via_lists = run_pretrained_cloud(cfg, tmp_path / "lists_run")
    assert via_lists["llm"] == "smollm2" and via_lists["cloud_lists"]["rows"] > 0
    for table in ("test_no_requests", "test_always_request"):
        for method, metrics in direct[table].items():
            assert via_lists[table][method] == pytest.approx(metrics), (table, method)
    assert via_lists["alpha"] == direct["alpha"]
    for row, expected in zip(via_lists["request_curve"], direct["request_curve"], strict=True):
        assert row["intelligent"]["NDCG@10"] == pytest.approx(expected["intelligent"]["NDCG@10"])
    # The cloud alone over the full catalogue: @10 metrics are exact from the 20-item lists.
    alone = via_lists["collaboration"]["test"]["all"]
    expected_alone = direct["collaboration"]["test"]["all"]
    for method in expected_alone:
        assert alone[method]["NDCG@10"] == pytest.approx(expected_alone[method]["NDCG@10"]), method
    assert not math.isnan(alone["llm_alone"]["HR@10"])
    assert via_lists["cloud_lists"]["alone_at_10_exact"]
    recorded = json.loads((tmp_path / "lists_run" / "metrics.json").read_text())["final"]["cloud_lists"]
    assert recorded == via_lists["cloud_lists"]


def test_the_pretrained_run_refuses_collaborative_srm_training_and_a_missing_path(tmp_path: Path) -> None:
    cfg = pattern_config(
        tmp_path, [f"llm.lists_path={tmp_path}", "collab.srm_training=collaborative"], "pretrained_cloud"
    )
    with pytest.raises(ValueError, match=r"collab\.srm_path=<model\.pt> or collab\.srm_training=standard"):
        run_pretrained_cloud(cfg, tmp_path / "run")
    cfg = pattern_config(tmp_path, ["llm.lists_path="], "pretrained_cloud")
    with pytest.raises(ValueError, match=r"llm\.lists_path is required"):
        run_pretrained_cloud(cfg, tmp_path / "run")


def test_precomputed_cloud_keys_on_the_last_max_len_items() -> None:
    cloud = PrecomputedCloud(
        [(2, 3)], np.array([[4, 1, 0]]), np.array([[-0.1, -0.5, -np.inf]], dtype=np.float32), 5, max_len=2
    )
    items, scores = cloud.recommend_tensor(pad_left([[5, 2, 3]], 3), 2)  # read as its last two items
    assert items.tolist() == [[4, 1]] and scores[0, 0] == pytest.approx(-0.1)
