"""Fine-tune the SmolLM2 cloud LLM (one token per item) on a GPU that has only torch, transformers and numpy.

Standalone on purpose: it imports nothing from :mod:`lsc4rec` (run it by path, ``python
lsc4rec/models/llm/gpu_finetune.py``), so it runs on an accelerator machine where the project's dependencies
(Flower, Hydra, gguf, ...) are not installed and nothing can be downloaded. Everything it needs travels as a
*payload* that :mod:`lsc4rec.models.llm.gpu_payload` prepares on the CPU:

* the transformer of SmolLM2-135M-Instruct in the GGUF's own Q4_1 form (per block of 32 weights an fp16 scale,
  an fp16 minimum and 32 four-bit codes; ``scale * code + min`` reproduces the dequantised float32 weights
  bit for bit), the RMSNorm weights in float32, and the model's ``LlamaConfig``;
* the item-token table ``[num_items + 1, d]`` (row 0 = the base's bos token, row ``i`` = item ``i``, started
  from the base's own embeddings of the item's text exactly as ``llm=smollm2 llm.item_init=text`` does). With
  ``llm.history_format=items`` a history is ``[bos, item tokens...]``, so the 49k-row word vocabulary is never
  read: the payload omits it, and the output head (tied, as in SmolLM2) ranks the item tokens only;
* the cloud's stale training sequences and its own validation histories (model selection), the histories whose
  lists the request curve needs (stale and fresh, validation and test moments), and a probe batch with the
  dequantised model's float32 logits (checks the assembled model before training).

The payload may be split over several folders (one per device call, each under the call's size limit):
pass them all; the parts are merged and checked complete. Training mirrors
:func:`lsc4rec.models.llm.llm_training.fit_llm` (next-item cross-entropy over every position of each
sequence's last ``max_len + 1`` items, AdamW, linear warm-up, gradient clipping, embedding dropout, model
selection on the cloud's own validation NDCG@10, full ranking with history items excluded) with bf16 autocast
on CUDA,
and stops by wall clock. One or more configurations share the time; the one best on validation writes the
lists: top-``K`` items and their log-probabilities (softmax over the items) for every scored history, its
own items excluded, as ``lists_<i>.npz`` chunks plus ``lists.json``, and ``log.json`` (epochs, validation
per epoch, seconds, GPU). :mod:`lsc4rec.simulations.pretrained_cloud` reads them back into the request
curve.

``--smoke`` runs the whole path on a tiny random Llama (seconds, CPU or GPU); ``--bench DIR`` times training
steps of a randomly initialised model of the payload's real shape.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

FORMAT = 1
#: The seven quantised matrices of a decoder layer (``transformers`` names under ``layers.<i>.``).
MATRICES: tuple[str, ...] = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
#: The float32 RMSNorm weights of a decoder layer.
NORMS: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
#: The history sets whose lists the request curve needs, in order.
SCORE_SETS: tuple[str, ...] = ("stale_valid", "fresh_valid", "stale_test", "fresh_test")
QK = 32  # weights per Q4_1 block
META, LAYERS, ITEMS, DATA = "meta.json", "layers.npz", "items.npz", "data.npz"
LISTS_INDEX, LOG = "lists.json", "log.json"
#: Rows per output chunk (50 candidates: about 9 MB per chunk, under the device's 16 MiB per returned file).
CHUNK_ROWS = 30_000


# ---------------------------------------------------------------------------------------------- Q4_1 blocks
def quantize_q4_1(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scale, min, codes)`` of a float matrix ``[rows, cols]`` (cols a multiple of 32), as ggml's Q4_1.

    ``scale`` and ``min`` are float16 ``[rows, cols / 32]``; ``codes`` uint8 ``[rows, cols / 32, 16]`` holds
    two 4-bit codes per byte (low nibble = weight ``j``, high nibble = weight ``j + 16`` of the block).
    """
    rows, cols = weight.shape
    if cols % QK:
        raise ValueError(f"Q4_1 needs a multiple of {QK} columns, got {cols}")
    blocks = weight.astype(np.float32).reshape(rows, cols // QK, QK)
    low, high = blocks.min(axis=2), blocks.max(axis=2)
    scale = ((high - low) / 15.0).astype(np.float16)
    lowest = low.astype(np.float16)
    step = scale.astype(np.float32)[..., None]
    inverse = np.divide(1.0, step, out=np.zeros_like(step), where=step != 0)
    codes = np.clip(np.floor((blocks - lowest.astype(np.float32)[..., None]) * inverse + 0.5), 0, 15)
    codes = codes.astype(np.uint8)
    packed = codes[..., :16] | (codes[..., 16:] << 4)
    return scale, lowest, packed.astype(np.uint8)


def dequantize_q4_1(scale: Tensor, lowest: Tensor, codes: Tensor) -> Tensor:
    """Float32 weights ``[rows, blocks * 32]`` of Q4_1 blocks (as ``gguf.quants``: ``scale * code + min``).

    ``scale * code`` is exact in float32 (an 11-bit mantissa times a 4-bit integer), so the one rounding of
    the addition gives the same bits on any device, fused multiply-add or not.
    """
    codes = codes.to(torch.uint8)
    values = torch.cat([codes & 0x0F, codes >> 4], dim=-1).float()
    out = values * scale.float()[..., None] + lowest.float()[..., None]
    return out.reshape(codes.shape[0], -1)


# ---------------------------------------------------------------------------------------------- the payload
@dataclass
class Payload:
    """A complete payload: config, quantised layers, item table, final norm and data arrays (numpy)."""

    meta: dict[str, Any]
    layers: dict[str, np.ndarray]
    items: np.ndarray  # [num_items + 1, d] float32, row 0 = bos
    norm: np.ndarray  # [d] float32, the final RMSNorm
    data: dict[str, np.ndarray]

    @property
    def num_layers(self) -> int:
        """Decoder layers of the model."""
        return int(self.meta["llama_config"]["num_hidden_layers"])


def write_part(
    directory: Path,
    meta: dict[str, Any],
    layers: dict[str, np.ndarray] | None = None,
    items: np.ndarray | None = None,
    norm: np.ndarray | None = None,
    data: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write one payload part (any subset of layers, item table + norm, data) with its ``meta.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    part_meta = dict(meta)
    part_meta["format"] = FORMAT
    part_meta["layer_ids"] = sorted({int(k.split(".")[0]) for k in (layers or {})})
    part_meta["has_items"] = items is not None
    part_meta["has_data"] = data is not None
    if layers:
        np.savez(directory / LAYERS, **layers)
    if items is not None:
        if norm is None:
            raise ValueError("the item table travels with the final norm")
        np.savez(directory / ITEMS, items=items.astype(np.float32), norm=norm.astype(np.float32))
    if data is not None:
        np.savez(directory / DATA, **data)
    (directory / META).write_text(json.dumps(part_meta, indent=1))
    return directory


def read_payload(directories: Sequence[Path]) -> Payload:
    """Merge the payload parts in ``directories``; raise ValueError naming what is missing or inconsistent."""
    meta: dict[str, Any] | None = None
    layers: dict[str, np.ndarray] = {}
    items = norm = None
    data: dict[str, np.ndarray] | None = None
    for directory in directories:
        path = Path(directory) / META
        if not path.is_file():
            raise ValueError(f"{path}: missing (not a payload part)")
        part = json.loads(path.read_text())
        if part.get("format") != FORMAT:
            raise ValueError(f"{path}: format {part.get('format')!r}, this script reads {FORMAT}")
        if meta is not None and part["llama_config"] != meta["llama_config"]:
            raise ValueError(f"{path}: llama_config differs from the other parts'")
        meta = meta or part
        if part["layer_ids"]:
            with np.load(Path(directory) / LAYERS) as stored:
                layers.update({k: stored[k] for k in stored.files})
        if part["has_items"]:
            with np.load(Path(directory) / ITEMS) as stored:
                items, norm = stored["items"], stored["norm"]
        if part["has_data"]:
            with np.load(Path(directory) / DATA) as stored:
                data = {k: stored[k] for k in stored.files}
    if meta is None:
        raise ValueError("no payload part given")
    count = int(meta["llama_config"]["num_hidden_layers"])
    for layer in range(count):
        for name in MATRICES:
            for field in ("scale", "min", "codes"):
                if f"{layer}.{name}.{field}" not in layers:
                    raise ValueError(f"payload incomplete: layer {layer} {name}.{field} is in no part")
        for name in NORMS:
            if f"{layer}.{name}" not in layers:
                raise ValueError(f"payload incomplete: layer {layer} {name} is in no part")
    if items is None or norm is None:
        raise ValueError("payload incomplete: no part holds the item table (items.npz)")
    if data is None:
        raise ValueError("payload incomplete: no part holds the data arrays (data.npz)")
    if items.shape != (int(meta["num_items"]) + 1, int(meta["llama_config"]["hidden_size"])):
        raise ValueError(f"item table is {items.shape}, expected (num_items + 1, hidden_size)")
    return Payload(meta=meta, layers=layers, items=items, norm=norm, data=data)


def layer_state(payload: Payload) -> dict[str, Tensor]:
    """The decoder's float32 state dict (``transformers`` ``LlamaModel`` names), dequantised exactly."""
    state: dict[str, Tensor] = {"norm.weight": torch.from_numpy(payload.norm.copy())}
    for layer in range(payload.num_layers):
        for name in MATRICES:
            parts = [
                torch.from_numpy(payload.layers[f"{layer}.{name}.{f}"]) for f in ("scale", "min", "codes")
            ]
            state[f"layers.{layer}.{name}.weight"] = dequantize_q4_1(*parts)
        for name in NORMS:
            state[f"layers.{layer}.{name}.weight"] = torch.from_numpy(
                payload.layers[f"{layer}.{name}"].copy()
            )
    return state


def ragged(data: dict[str, np.ndarray], name: str) -> list[np.ndarray]:
    """The sequences stored as ``<name>_flat`` + ``<name>_offsets`` (``offsets[i]:offsets[i + 1]``)."""
    flat, offsets = data[f"{name}_flat"], data[f"{name}_offsets"]
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def pack(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(flat int32, offsets int64)`` of ragged ``sequences`` (the inverse of :func:`ragged`)."""
    lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.fromiter((int(i) for s in sequences for i in s), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


# ---------------------------------------------------------------------------------------------- the model
class ItemLM(nn.Module):
    """SmolLM2's decoder over ``[bos, item tokens...]`` with a tied item-token table as input and output."""

    def __init__(self, config: dict[str, Any], items: Tensor, dropout: float) -> None:
        """``config``: ``LlamaConfig`` keys; ``items [num_items + 1, d]``: row 0 = bos, row ``i`` = item i."""
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        settings = dict(config)
        settings["vocab_size"] = 1  # inputs arrive as embeddings: the word vocabulary is never read
        settings.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
        self.decoder = LlamaModel(LlamaConfig(**settings))
        self.decoder.embed_tokens = None  # type: ignore[assignment]
        self.items = nn.Parameter(items.clone().float())
        self.dropout = nn.Dropout(dropout)

    @property
    def num_items(self) -> int:
        """Catalogue size (item ids 1..num_items)."""
        return int(self.items.shape[0] - 1)

    def hidden(self, tokens: Tensor) -> Tensor:
        """Last-layer states ``[B, T, d]`` of right-padded ``tokens`` (0 = bos/padding, i = item i).

        Right padding with a causal mask needs no attention mask: real tokens never see the padding after
        them, and positions count from the bos as in the left-padded :class:`CloudLLM`.
        """
        embeds = self.dropout(nn.functional.embedding(tokens, self.items))
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None].expand_as(tokens)
        return self.decoder(inputs_embeds=embeds, position_ids=positions).last_hidden_state

    def logits(self, hidden: Tensor) -> Tensor:
        """Item logits ``[..., num_items]`` (column ``i - 1`` = item ``i``) through the tied table."""
        return hidden @ self.items[1:].to(hidden.dtype).T


def token_rows(sequences: Sequence[np.ndarray], width: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``[bos, last width items]`` rows ``[B, 1 + width']`` and their item counts ``[B]``."""
    cut = [np.asarray(s[-width:] if width else s[:0], dtype=np.int64) for s in sequences]
    lengths = torch.as_tensor([len(s) for s in cut], dtype=torch.long)
    rows = torch.zeros(len(cut), 1 + max((len(s) for s in cut), default=0), dtype=torch.long)
    for row, seq in enumerate(cut):
        rows[row, 1 : 1 + len(seq)] = torch.from_numpy(seq)
    return rows, lengths


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning configuration (the time budget is shared between configurations)."""

    name: str
    lr: float = 3e-4  # the transformer
    item_lr: float = 1e-3  # the new item-token table
    batch_size: int = 64
    warmup_steps: int = 100
    weight_decay: float = 0.01
    dropout: float = 0.1
    grad_clip: float = 1.0
    patience: int = 3
    max_epochs: int = 100


#: Configurations by name (``--configs``): the transformer's learning rate; the item table's is 1e-3.
CONFIGS: dict[str, TrainConfig] = {
    c.name: c
    for c in (
        TrainConfig("lr3e-4", lr=3e-4),
        TrainConfig("lr1e-4", lr=1e-4),
        TrainConfig("lr1e-3", lr=1e-3),
    )
}
#: What the device run tries, in order; the time is split evenly and validation picks the winner.
DEFAULT_CONFIGS: tuple[TrainConfig, ...] = (CONFIGS["lr3e-4"], CONFIGS["lr1e-4"])


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def score_histories(
    model: ItemLM,
    histories: Sequence[np.ndarray],
    max_len: int,
    k: int,
    device: torch.device,
    targets: np.ndarray | None = None,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Top-``k`` items and log-probabilities per history (its last ``max_len`` items excluded), best first.

    With ``targets``, also NDCG@10 / HR@10 / Recall@k of the full ranking (history excluded; a target in the
    history is a miss), the protocol of :func:`lsc4rec.models.llm.llm_training.evaluate_llm`.
    """
    model.eval()
    n = model.num_items
    k = min(k, n)
    out_items = np.zeros((len(histories), k), dtype=np.int32)
    out_scores = np.zeros((len(histories), k), dtype=np.float32)
    order = np.argsort([min(len(h), max_len) for h in histories], kind="stable")
    ndcg = hits = recall = 0.0
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        rows, lengths = token_rows([histories[i] for i in index], max_len)
        rows, lengths = rows.to(device), lengths.to(device)
        with _autocast(device):
            hidden = model.hidden(rows)
        last = hidden[torch.arange(len(index), device=device), lengths].float()
        logprobs = torch.log_softmax(last @ model.items[1:].float().T, dim=-1)
        # The history's own items leave the ranking (as CloudLLM.recommend_tensor / evaluate_llm).
        seen = torch.zeros(len(index), n + 1, dtype=torch.bool, device=device)
        seen.scatter_(1, rows[:, 1:], True)  # padding lands in column 0, which is dropped
        ranked = logprobs.masked_fill(seen[:, 1:], float("-inf"))
        top = ranked.topk(k, dim=1)
        out_items[index] = (top.indices + 1).int().cpu().numpy()
        out_scores[index] = top.values.cpu().numpy()
        if targets is not None:
            target = torch.as_tensor(targets[index], dtype=torch.long, device=device) - 1
            target_score = ranked.gather(1, target[:, None])
            rank = (ranked >= target_score).sum(dim=1) - 1
            rank = torch.where(target_score[:, 0] == float("-inf"), torch.full_like(rank, n), rank)
            ndcg += float(torch.where(rank < 10, 1.0 / torch.log2(rank.float() + 2.0), 0.0).sum())
            hits += float((rank < 10).sum())
            recall += float((rank < k).sum())
    count = max(len(histories), 1)
    metrics = {"NDCG@10": ndcg / count, "HR@10": hits / count, f"Recall@{k}": recall / count}
    return out_items, out_scores, metrics


def _train_rows(sequences: Sequence[np.ndarray], max_len: int) -> tuple[Tensor, Tensor]:
    usable = [s[-(max_len + 1) :] for s in sequences if len(s) >= 2]
    return token_rows(usable, max_len + 1)


def _batches(lengths: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled batches of rows of similar length (buckets of 50 batches sorted by length, as in
    TrainBatches)."""
    order = torch.randperm(len(lengths), generator=generator)
    bucket = batch_size * 50
    batches = []
    for start in range(0, len(order), bucket):
        chunk = order[start : start + bucket]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += list(chunk.split(batch_size))
    shuffle = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in shuffle]


def _optimizer(model: ItemLM, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the decoder (weight decay on matrices only) and the item table (its own rate)."""
    decay, no_decay = [], []
    for param in model.decoder.parameters():
        (no_decay if param.ndim < 2 else decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "lr": config.lr, "weight_decay": config.weight_decay},
            {"params": no_decay, "lr": config.lr, "weight_decay": 0.0},
            {"params": [model.items], "lr": config.item_lr, "weight_decay": 0.0},
        ],
        fused=device.type == "cuda",
    )


def _train_step(
    model: ItemLM,
    optimizer: torch.optim.Optimizer,
    base_lrs: list[float],
    tokens: Tensor,
    config: TrainConfig,
    step: int,
    device: torch.device,
) -> tuple[float, int]:
    """One warmed-up, clipped optimizer step on the rows ``tokens``; its mean loss and predicted items."""
    targets = tokens[:, 1:]
    predict = targets > 0  # every item, the first one from the bos alone
    with _autocast(device):
        hidden = model.hidden(tokens)[:, :-1][predict]
        loss = nn.functional.cross_entropy(model.logits(hidden).float(), targets[predict] - 1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * warm
    optimizer.step()
    return float(loss.detach()), int(predict.sum())


def fit(
    payload: Payload,
    config: TrainConfig,
    deadline: float,
    device: torch.device,
    seed: int,
    log: list[dict[str, Any]],
) -> tuple[float, dict[str, Tensor] | None]:
    """Fine-tune one configuration until ``deadline`` (``time.monotonic``), patience or its epoch cap.

    Returns the best validation NDCG@10 and the best weights (on the CPU); appends one record per epoch.
    """
    torch.manual_seed(seed)
    model = ItemLM(payload.meta["llama_config"], torch.from_numpy(payload.items), config.dropout)
    model.decoder.load_state_dict(layer_state(payload), strict=True)
    model.to(device)
    max_len = int(payload.meta["max_len"])
    rows, lengths = _train_rows(ragged(payload.data, "train"), max_len)
    valid = ragged(payload.data, "valid")
    valid_targets = payload.data["valid_targets"]
    optimizer = _optimizer(model, config, device)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(seed)
    rows_device = rows.to(device)
    best, best_state, since_best, step = -math.inf, None, 0, 0
    start = time.monotonic()
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        total, count, finished = 0.0, 0, True
        for batch in _batches(lengths, config.batch_size, generator):
            if time.monotonic() > deadline:
                finished = False
                break
            width = int(lengths[batch].max()) + 1
            tokens = rows_device[batch.to(device), :width]
            loss, predicted = _train_step(model, optimizer, base_lrs, tokens, config, step, device)
            step += 1
            total += loss * predicted
            count += predicted
        if count == 0:
            break
        _, _, metrics = score_histories(model, valid, max_len, 50, device, valid_targets)
        record = {
            "config": config.name,
            "epoch": epoch,
            "complete": finished,
            "steps": step,
            "train_loss": round(total / count, 5),
            "valid": {k: round(v, 5) for k, v in metrics.items()},
            "seconds": round(time.monotonic() - start, 1),
        }
        log.append(record)
        print(json.dumps(record), flush=True)
        if metrics["NDCG@10"] > best:
            best, since_best = metrics["NDCG@10"], 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if not finished or since_best >= config.patience or time.monotonic() > deadline:
            break
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return best, best_state


def probe_logits(payload: Payload, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """Float32 item logits ``[P, num_items]`` after each probe history, computed on the CPU."""
    model = ItemLM(payload.meta["llama_config"], torch.from_numpy(payload.items), 0.0)
    model.decoder.load_state_dict(layer_state(payload), strict=True)
    model.eval()
    rows, lengths = token_rows([np.asarray(h) for h in histories], int(payload.meta["max_len"]))
    with torch.no_grad():
        last = model.hidden(rows)[torch.arange(len(lengths)), lengths]
        return (last @ model.items[1:].T).numpy()


def check_probe(model: ItemLM, payload: Payload, device: torch.device) -> float:
    """Largest absolute difference between the assembled model's float32 item logits on the probe batch and
    the dequantised base's, computed on the CPU when the payload was made (inf without a probe)."""
    if "probe_logits" not in payload.data:
        return math.inf
    model.eval()
    rows, lengths = token_rows(ragged(payload.data, "probe"), int(payload.meta["max_len"]))
    with torch.no_grad():
        hidden = model.hidden(rows.to(device))
        last = hidden[torch.arange(len(lengths), device=device), lengths.to(device)].float()
        logits = (last @ model.items[1:].float().T).cpu()
    return float((logits - torch.from_numpy(payload.data["probe_logits"])).abs().max())


def write_lists(
    directory: Path, histories: Sequence[np.ndarray], items: np.ndarray, scores: np.ndarray, meta: dict
) -> list[str]:
    """Write the lists in chunks of :data:`CHUNK_ROWS` rows plus their ``lists.json`` index; return names."""
    names = []
    for chunk, start in enumerate(range(0, len(histories), CHUNK_ROWS)):
        flat, offsets = pack(histories[start : start + CHUNK_ROWS])
        name = f"lists_{chunk}.npz"
        np.savez_compressed(
            directory / name,
            histories_flat=flat,
            histories_offsets=offsets,
            items=items[start : start + CHUNK_ROWS],
            scores=scores[start : start + CHUNK_ROWS],
        )
        names.append(name)
    index = dict(meta) | {"format": FORMAT, "chunks": names, "rows": len(histories), "k": int(items.shape[1])}
    (directory / LISTS_INDEX).write_text(json.dumps(index, indent=1))
    return names


def _pick_device(device_name: str) -> torch.device:
    """The device ``device_name`` names (``auto``: CUDA when present); TF32 matmuls on CUDA."""
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device_name == "auto" else device_name
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def _keep_first(payload: Payload, limit: int) -> None:
    """Keep only the first ``limit`` training, validation and scored histories of ``payload`` (in place)."""
    for name in ("train", "valid", "score"):
        kept = ragged(payload.data, name)[:limit]
        payload.data[f"{name}_flat"], payload.data[f"{name}_offsets"] = pack(kept)
    payload.data["valid_targets"] = payload.data["valid_targets"][:limit]


def _probe_difference(payload: Payload, device: torch.device) -> float:
    """:func:`check_probe` of the base model assembled on ``device`` (built from the current torch seed)."""
    probe_model = ItemLM(payload.meta["llama_config"], torch.from_numpy(payload.items), 0.0)
    probe_model.decoder.load_state_dict(layer_state(payload), strict=True)
    return check_probe(probe_model.to(device), payload, device)


def _fit_configs(
    payload: Payload,
    configs: Sequence[TrainConfig],
    budget_s: float,
    device: torch.device,
    seed: int,
    log: dict[str, Any],
) -> tuple[float, dict[str, Tensor] | None, TrainConfig | None]:
    """Fine-tune each configuration on an even share of the time left; the best validation NDCG@10, its
    weights and configuration (None when none finished an epoch). Logs the epochs and training seconds."""
    epochs: list[dict[str, Any]] = []
    best, best_state, best_config = -math.inf, None, None
    train_start = time.monotonic()
    for index, config in enumerate(configs):
        remaining = budget_s - (time.monotonic() - train_start)
        deadline = time.monotonic() + remaining / (len(configs) - index)
        value, state = fit(payload, config, deadline, device, seed, epochs)
        if state is not None and value > best:
            best, best_state, best_config = value, state, config
    log["epochs"] = epochs
    log["seconds_training"] = round(time.monotonic() - train_start, 1)
    return best, best_state, best_config


def run(
    parts: Sequence[Path],
    out: Path,
    budget_s: float,
    configs: Sequence[TrainConfig] = DEFAULT_CONFIGS,
    k: int = 50,
    seed: int = 42,
    device_name: str = "auto",
    limit: int | None = None,
) -> dict[str, Any]:
    """Assemble the payload, fine-tune within ``budget_s`` seconds, write the best model's lists and log.

    ``limit`` keeps only the first ``limit`` training, validation and scored histories (a dry run of the
    real model on a CPU).
    """
    wall = time.monotonic()
    device = _pick_device(device_name)
    payload = read_payload(parts)
    if limit is not None:
        _keep_first(payload, limit)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    log: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "budget_s": budget_s,
        "configs": [asdict(c) for c in configs],
        "num_items": int(payload.meta["num_items"]),
        "train_sequences": len(payload.data["train_offsets"]) - 1,
        "valid_users": len(payload.data["valid_targets"]),
        "seconds_assemble": round(time.monotonic() - wall, 1),
    }
    torch.manual_seed(seed)
    log["probe_max_abs_diff"] = _probe_difference(payload, device)
    print(f"probe max |logit difference| vs the CPU dequantised model: {log['probe_max_abs_diff']:.3g}")
    best, best_state, best_config = _fit_configs(payload, configs, budget_s, device, seed, log)
    if best_state is None or best_config is None:
        raise RuntimeError("no configuration finished an epoch within the budget")
    log["selected"] = {"config": best_config.name, "valid_NDCG@10": round(best, 5)}
    model = ItemLM(payload.meta["llama_config"], torch.from_numpy(payload.items), 0.0)
    model.load_state_dict(best_state)
    model.to(device)
    score_start = time.monotonic()
    histories = ragged(payload.data, "score")
    items, scores, _ = score_histories(model, histories, int(payload.meta["max_len"]), k, device)
    _, _, valid = score_histories(
        model,
        ragged(payload.data, "valid"),
        int(payload.meta["max_len"]),
        k,
        device,
        payload.data["valid_targets"],
    )
    log["selected"]["valid_rescored"] = {key: round(v, 5) for key, v in valid.items()}
    log["seconds_scoring"] = round(time.monotonic() - score_start, 1)
    meta = {
        "num_items": int(payload.meta["num_items"]),
        "max_len": int(payload.meta["max_len"]),
        "source": payload.meta.get("source", ""),
        "config": best_config.name,
    }
    log["files"] = write_lists(out, histories, items, scores, meta)
    log["seconds_total"] = round(time.monotonic() - wall, 1)
    (out / LOG).write_text(json.dumps(log, indent=1))
    return log


# ---------------------------------------------------------------------------------------------- smoke / bench
def tiny_payload(directory: Path, seed: int = 0, num_items: int = 300, users: int = 120) -> list[Path]:
    """A complete random payload of a tiny Llama (2 layers, d=64) in two parts, for smoke tests."""
    rng = np.random.default_rng(seed)
    config = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
    }
    d, ff = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "self_attn.q_proj": (d, d),
        "self_attn.k_proj": (d // 2, d),
        "self_attn.v_proj": (d // 2, d),
        "self_attn.o_proj": (d, d),
        "mlp.gate_proj": (ff, d),
        "mlp.up_proj": (ff, d),
        "mlp.down_proj": (d, ff),
    }
    layers: dict[str, np.ndarray] = {}
    for layer in range(config["num_hidden_layers"]):
        for name, shape in shapes.items():
            scale, lowest, codes = quantize_q4_1(rng.normal(0, 0.05, shape).astype(np.float32))
            layers |= {
                f"{layer}.{name}.scale": scale,
                f"{layer}.{name}.min": lowest,
                f"{layer}.{name}.codes": codes,
            }
        for name in NORMS:
            layers[f"{layer}.{name}"] = np.ones(d, dtype=np.float32)
    items = rng.normal(0, 0.5, (num_items + 1, d)).astype(np.float32)
    # Users walk through item "neighbourhoods", so there is something to learn.
    sequences = []
    for _ in range(users):
        length = int(rng.integers(5, 15))
        first = int(rng.integers(1, num_items - 20))
        sequences.append([first + int(j) for j in np.sort(rng.integers(0, 20, length))])
    stale_test = [s[:-3] for s in sequences]
    train = [s[:-1] for s in stale_test]
    score = (
        [s[:-4] for s in sequences] + [s[:-2] for s in sequences] + stale_test + [s[:-1] for s in sequences]
    )
    score = [list(t) for t in dict.fromkeys(tuple(s[-8:]) for s in score)]
    data: dict[str, np.ndarray] = {}
    for name, seqs in (("train", train), ("valid", [s[:-1] for s in train]), ("score", score)):
        data[f"{name}_flat"], data[f"{name}_offsets"] = pack(seqs)
    data["valid_targets"] = np.asarray([s[-1] for s in train], dtype=np.int32)
    meta = {"llama_config": config, "num_items": num_items, "max_len": 8, "source": "tiny random Llama"}
    # The probe's reference logits: the float32 model on the CPU, as gpu_payload computes them for SmolLM2.
    probe = score[:4]
    data["probe_flat"], data["probe_offsets"] = pack(probe)
    reference = Payload(meta, layers, items, np.ones(d, dtype=np.float32), data)
    data["probe_logits"] = probe_logits(reference, probe)
    layer_ids = range(config["num_hidden_layers"])
    first = {k: v for k, v in layers.items() if int(k.split(".")[0]) in layer_ids[:1]}
    second = {k: v for k, v in layers.items() if k not in first}
    return [
        write_part(directory / "a", meta, layers=first, items=items, norm=np.ones(d, dtype=np.float32)),
        write_part(directory / "b", meta, layers=second, data=data),
    ]


def smoke(out: Path, device_name: str = "auto", budget_s: float = 20.0) -> dict[str, Any]:
    """The whole path on a tiny random payload: assemble, fine-tune two configurations, write and check the
    lists."""
    with tempfile.TemporaryDirectory() as scratch:
        parts = tiny_payload(Path(scratch))
        configs = (
            TrainConfig("smoke-a", batch_size=16, warmup_steps=5, max_epochs=3),
            TrainConfig("smoke-b", lr=1e-4, batch_size=16, warmup_steps=5, max_epochs=2),
        )
        log = run(parts, out, budget_s, configs, k=20, seed=0, device_name=device_name)
        payload = read_payload(parts)
    index = json.loads((out / LISTS_INDEX).read_text())
    histories = ragged(payload.data, "score")
    row = 0
    for name in index["chunks"]:
        with np.load(out / name) as chunk:
            for items, scores in zip(chunk["items"], chunk["scores"], strict=True):
                if set(items.tolist()) & set(histories[row].tolist()) or np.any(np.diff(scores) > 0):
                    raise AssertionError(f"smoke: list {row} holds a history item or is not sorted")
                row += 1
    if row != len(histories):
        raise AssertionError(f"smoke: {row} lists for {len(histories)} histories")
    print(f"SMOKE OK on {log['device']}: {len(log['epochs'])} epochs, {row} lists")
    return log


def bench(
    directory: Path, device_name: str = "auto", steps: int = 20, batch_size: int = 64
) -> dict[str, Any]:
    """Seconds per training step of a random model with the payload part's real config (no weights
    needed)."""
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device_name == "auto" else device_name
    )
    meta = json.loads((directory / META).read_text())
    items = torch.randn(int(meta["num_items"]) + 1, int(meta["llama_config"]["hidden_size"])) * 0.02
    model = ItemLM(meta["llama_config"], items, 0.1).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    }
    for width in (8, 52):
        tokens = torch.randint(1, int(meta["num_items"]) + 1, (batch_size, width), device=device)
        for step in range(steps + 3):
            if step == 3:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            with _autocast(device):
                hidden = model.hidden(tokens)[:, :-1].reshape(-1, items.shape[1])
                loss = nn.functional.cross_entropy(
                    model.logits(hidden).float(), tokens[:, 1:].reshape(-1) - 1
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        result[f"seconds_per_step_b{batch_size}_t{width}"] = round((time.perf_counter() - start) / steps, 4)
    print(json.dumps(result), flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``--smoke OUT``, ``--bench PART``, or ``--out OUT PART [PART ...]`` (the real run)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="*", type=Path, help="payload part folders")
    parser.add_argument("--out", type=Path, help="where lists_*.npz, lists.json and log.json go")
    parser.add_argument("--budget-s", type=float, default=300.0, help="wall-clock seconds of training")
    parser.add_argument("--k", type=int, default=50, help="candidates per list")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--configs", default=",".join(c.name for c in DEFAULT_CONFIGS), help=f"from {', '.join(CONFIGS)}"
    )
    parser.add_argument("--limit", type=int, help="keep the first N histories of each set (dry run)")
    parser.add_argument("--smoke", type=Path, help="run the tiny end-to-end check, writing here")
    parser.add_argument("--bench", type=Path, help="time training steps of this payload part's config")
    args = parser.parse_args(argv)
    if args.smoke:
        smoke(args.smoke, args.device)
    if args.bench:
        bench(args.bench, args.device)
    if args.parts:
        if args.out is None:
            parser.error("--out is needed with payload parts")
        configs = [CONFIGS[name] for name in args.configs.split(",")]
        log = run(args.parts, args.out, args.budget_s, configs, args.k, args.seed, args.device, args.limit)
        print(json.dumps({k: v for k, v in log.items() if k != "epochs"}, indent=1))


if __name__ == "__main__":
    main()
