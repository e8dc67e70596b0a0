"""The request curve with a cloud whose lists were computed elsewhere (SmolLM2 fine-tuned on a GPU).

    python -m lsc4rec.simulations.pretrained_cloud llm.lists_path=<folder> collab.srm_path=<SASRec model.pt>
    python -m lsc4rec.simulations.pretrained_cloud --export <saved llm> <folder>   # lists of a saved CloudLLM

:mod:`lsc4rec.models.llm.gpu_finetune` fine-tunes the pretrained cloud on an accelerator and writes, for every
history the request curve reads (the stale prompts and the real-time histories of the validation and test
moments), the top-``K`` items and their log-probabilities. :class:`PrecomputedCloud` answers the request
curve's questions from those lists — the candidate list of a history (``recommend_tensor``) and, for the
models-alone rows, the item scores with every item outside the list at ``-inf`` — and
:func:`lsc4rec.simulations.request_curve.run_request_curve` runs unchanged around it: the same device SRM,
fusion over the union with α chosen on validation, the learned request score fitted on validation, the
request curve, test read once. NDCG/HR@10 of the cloud alone are exact as long as every list keeps 10 items
once the device's seen items leave it (checked on every run: ``cloud_lists.alone_at_10_exact``; 50-item
lists on Beauty keep at least 37); deeper full-ranking metrics (``full_ranking_context``'s @20 and MRR)
need not be.

The composed config is ``conf/pretrained_cloud.yaml`` (the request curve's, with ``llm=smollm2``). The device
SRM must be given (``collab.srm_path``) or trained with ``collab.srm_training=standard``: collaborative SRM
training asks the LLM for per-position candidates, which the lists do not hold. ``--export`` writes the lists
of a saved :class:`~lsc4rec.models.llm.recommender.CloudLLM` in the same format, so a run on them can be
checked against the request curve run with that model.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import Tensor

from lsc4rec.cli import exit_on_bad_input
from lsc4rec.config import compose_config, config_dir
from lsc4rec.data import leave_one_out, load_dataset, pad_left
from lsc4rec.data.staleness import cloud_view
from lsc4rec.models.llm import gpu_finetune as gpu
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.reporting import emit_result, write_json
from lsc4rec.settings import REQUEST_CURVE_IGNORES, RequestCurveSettings, refuse_unread_keys, typed_run
from lsc4rec.simulations.request_curve import compact_summary, run_request_curve
from lsc4rec.tracking import RunTracker

logger = logging.getLogger(__name__)

__all__ = ["PrecomputedCloud", "export_lists", "load_lists", "run_pretrained_cloud"]

CONFIG_NAME = "pretrained_cloud"


@dataclass(frozen=True)
class _OneTokenPerItem:
    """What the request curve reads of the LLM's tokenizer: one token per item."""

    depth: int = 1


class PrecomputedCloud:
    """The part of :class:`CloudLLM` the request curve reads, answered from lists computed elsewhere.

    ``histories`` are the scored histories (their last ``max_len`` items), ``items`` / ``scores`` ``[R, K]``
    each one's list, best first (item 0 = an empty slot, score ``-inf``), its own items excluded.
    """

    tokenizer = _OneTokenPerItem()

    def __init__(
        self,
        histories: Sequence[tuple[int, ...]],
        items: np.ndarray,
        scores: np.ndarray,
        num_items: int,
        max_len: int,
        item_init: str = "text",
        info: dict[str, Any] | None = None,
    ) -> None:
        """Index the lists by history; ``info`` is what the producer wrote about them (``lists.json``)."""
        self._rows = {tuple(h): row for row, h in enumerate(histories)}
        self.items = torch.as_tensor(items, dtype=torch.long)
        self.scores = torch.as_tensor(scores, dtype=torch.float32)
        self.num_items = int(num_items)
        self.max_len = int(max_len)
        self.max_history = self.max_len
        self.item_init = item_init
        self.info = dict(info or {})

    @property
    def k(self) -> int:
        """Candidates held per history."""
        return int(self.items.shape[1])

    @property
    def device(self) -> torch.device:
        """Always the CPU (nothing runs)."""
        return torch.device("cpu")

    def to(self, *args: Any, **kwargs: Any) -> PrecomputedCloud:
        """Nothing to move: the lists stay where they are."""
        return self

    def eval(self) -> PrecomputedCloud:
        """Nothing to switch: lists have no training mode."""
        return self

    def train(self, mode: bool = True) -> PrecomputedCloud:
        """Nothing to switch: lists have no training mode."""
        return self

    def rows(self, histories: Tensor) -> Tensor:
        """The list row of each left-padded history ``[B, L]`` (its last ``max_len`` items); ValueError
        naming the first history that was not scored."""
        found = []
        for index, row in enumerate(histories[:, -self.max_len :].tolist()):
            key = tuple(i for i in row if i > 0)
            if key not in self._rows:
                raise ValueError(
                    f"history {index} ({len(key)} items, last {list(key[-3:])}) has no precomputed list: "
                    "the lists were made for other histories (another dataset, lag or llm.max_len?)"
                )
            found.append(self._rows[key])
        return torch.as_tensor(found, dtype=torch.long)

    def recommend_tensor(
        self, histories: Tensor, n: int, exclude_history: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Top-``n`` items ``[B, n]`` and log-probabilities of each history (as
        ``CloudLLM.recommend_tensor``)."""
        if not exclude_history:
            raise ValueError("precomputed lists exclude each history's own items")
        if n > self.k:
            raise ValueError(f"{n} candidates asked for; the precomputed lists hold {self.k}")
        rows = self.rows(histories)
        return self.items[rows, :n].clone(), self.scores[rows, :n].clone()

    def item_scores(self, histories: Tensor) -> Tensor:
        """Scores ``[B, num_items + 1]``: each list's log-probabilities, every other item ``-inf``."""
        rows = self.rows(histories)
        out = torch.full((len(rows), self.num_items + 1), float("-inf"))
        out.scatter_(1, self.items[rows], self.scores[rows])
        out[:, 0] = float("-inf")
        return out


def _field(path: Path, stored: Any, name: str) -> np.ndarray:
    if name not in stored:
        raise ValueError(f"{path}: field {name!r} is missing")
    return np.asarray(stored[name])


def _check_chunk(path: Path, stored: Any, num_items: int, max_len: int, k: int) -> tuple[list, Any, Any]:
    """The histories, items and scores of one ``lists_<i>.npz``, every field checked (errors name both)."""
    flat = _field(path, stored, "histories_flat")
    offsets = _field(path, stored, "histories_offsets")
    items = _field(path, stored, "items")
    scores = _field(path, stored, "scores")
    for name, array, kind in (
        ("histories_flat", flat, "i"),
        ("histories_offsets", offsets, "i"),
        ("items", items, "i"),
        ("scores", scores, "f"),
    ):
        if array.dtype.kind != kind and not (kind == "i" and array.dtype.kind == "u"):
            raise ValueError(f"{path}: field {name!r} has dtype {array.dtype}, expected {kind}")
    if flat.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1:
        raise ValueError(f"{path}: fields 'histories_flat' / 'histories_offsets' must be 1-D")
    if offsets[0] != 0 or offsets[-1] != len(flat) or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{path}: field 'histories_offsets' must rise from 0 to len(histories_flat)")
    rows = len(offsets) - 1
    if np.any(np.diff(offsets) > max_len):
        raise ValueError(f"{path}: field 'histories_offsets' gives a history longer than max_len={max_len}")
    if len(flat) and (flat.min() < 1 or flat.max() > num_items):
        raise ValueError(f"{path}: field 'histories_flat' holds an item id outside 1..{num_items}")
    for name, array in (("items", items), ("scores", scores)):
        if array.shape != (rows, k):
            raise ValueError(f"{path}: field {name!r} is {array.shape}, expected ({rows}, {k}) (rows, k)")
    if items.size and (items.min() < 0 or items.max() > num_items):
        raise ValueError(f"{path}: field 'items' holds an id outside 0..{num_items} (0 = empty)")
    real = items > 0
    if np.any(~np.isfinite(scores[real])) or np.any(np.isnan(scores)):
        raise ValueError(f"{path}: field 'scores' is not finite for a listed item")
    filled = np.where(real, scores, -np.inf)
    if np.any(np.diff(filled, axis=1) > 0):
        raise ValueError(f"{path}: field 'scores' is not non-increasing along a list (best first)")
    histories = [tuple(int(i) for i in flat[offsets[r] : offsets[r + 1]]) for r in range(rows)]
    for row, history in enumerate(histories):
        listed = items[row][real[row]]
        if len(set(listed.tolist())) != len(listed):
            raise ValueError(f"{path}: field 'items' row {row} lists an item twice")
        if set(listed.tolist()) & set(history):
            raise ValueError(f"{path}: field 'items' row {row} lists an item of its own history")
    return histories, np.where(real, items, 0), np.where(real, scores, -np.inf).astype(np.float32)


def load_lists(directory: str | Path, num_items: int | None = None) -> PrecomputedCloud:
    """Read what :mod:`lsc4rec.models.llm.gpu_finetune` (or :func:`export_lists`) wrote into ``directory``.

    Every file and field is checked; a bad one raises ValueError naming the file and the field. With
    ``num_items`` the lists must be for a catalogue of that size.
    """
    directory = Path(directory)
    index_path = directory / gpu.LISTS_INDEX
    if not index_path.is_file():
        raise ValueError(f"{index_path}: missing (not a folder of precomputed lists)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_path}: not JSON ({error})") from error
    if not isinstance(index, dict):
        raise ValueError(f"{index_path}: expected a JSON object")
    for name, kind in (("format", int), ("chunks", list), ("rows", int), ("k", int), ("num_items", int)):
        if name not in index:
            raise ValueError(f"{index_path}: field {name!r} is missing")
        if not isinstance(index[name], kind) or isinstance(index[name], bool):
            raise ValueError(f"{index_path}: field {name!r} must be {kind.__name__}, got {index[name]!r}")
    if index["format"] != gpu.FORMAT:
        raise ValueError(f"{index_path}: field 'format' is {index['format']}, this reader reads {gpu.FORMAT}")
    if num_items is not None and index["num_items"] != num_items:
        raise ValueError(
            f"{index_path}: field 'num_items' is {index['num_items']}; the dataset has {num_items} items"
        )
    if index["k"] < 1:
        raise ValueError(f"{index_path}: field 'k' must be >= 1, got {index['k']}")
    max_len = index.get("max_len", 50)
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"{index_path}: field 'max_len' must be a positive integer, got {max_len!r}")
    histories: list[tuple[int, ...]] = []
    items, scores = [], []
    for name in index["chunks"]:
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise ValueError(f"{index_path}: field 'chunks' holds {name!r}, not a file name in the folder")
        path = directory / name
        if not path.is_file():
            raise ValueError(f"{path}: missing (named in {index_path.name} field 'chunks')")
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, EOFError, ValueError) as error:
            raise ValueError(f"{path}: not a readable .npz ({error})") from error
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not an .npz archive (a single array?)")
        with archive as stored:
            chunk = _check_chunk(path, stored, index["num_items"], max_len, index["k"])
        histories += chunk[0]
        items.append(chunk[1])
        scores.append(chunk[2])
    if len(histories) != index["rows"]:
        raise ValueError(f"{index_path}: field 'rows' is {index['rows']}, the chunks hold {len(histories)}")
    if len(set(histories)) != len(histories):
        raise ValueError(f"{directory}: a history has two lists")
    return PrecomputedCloud(
        histories,
        np.concatenate(items) if items else np.zeros((0, index["k"]), dtype=np.int64),
        np.concatenate(scores) if scores else np.zeros((0, index["k"]), dtype=np.float32),
        index["num_items"],
        max_len,
        item_init=str(index.get("item_init", "text")),
        info=index,
    )


def request_curve_histories(run: RequestCurveSettings) -> list[list[int]]:
    """Every distinct history (last ``llm.max_len`` items) whose list the request curve of ``run`` reads, in
    the order :mod:`lsc4rec.models.llm.gpu_payload` scores them."""
    split = leave_one_out(
        load_dataset(run.data.name, run.data.path, run.data.format, run.data.text_path, kcore=run.data.kcore)
    )
    view = cloud_view(split, run.collab.cloud_lag, users=run.collab.cloud_users, seed=run.seed)
    max_len = run.llm.max_len
    sets = (
        view.stale_valid_prompts,
        split.valid_histories(),
        view.stale_test_prompts,
        split.test_histories(),
    )
    rows = dict.fromkeys(tuple((h or [])[-max_len:]) for seqs in sets for h in seqs)
    return [list(r) for r in rows]


def export_lists(llm: CloudLLM, histories: Sequence[Sequence[int]], out: Path, k: int = 50) -> dict[str, Any]:
    """Write ``llm``'s lists for ``histories`` in the device format (``lists_<i>.npz`` + ``lists.json``)."""
    if llm.tokenizer.depth != 1:
        raise ValueError("exporting lists needs one token per item")
    out.mkdir(parents=True, exist_ok=True)
    items, scores = [], []
    for start in range(0, len(histories), 512):
        chunk = pad_left(histories[start : start + 512], llm.max_len)
        found, values = llm.recommend_tensor(chunk, k)
        items.append(found.numpy().astype(np.int32))
        scores.append(values.float().numpy())
    meta = {
        "num_items": llm.num_items,
        "max_len": llm.max_len,
        "source": "export",
        "item_init": llm.item_init,
    }
    cut = [np.asarray(h[-llm.max_len :], dtype=np.int32) for h in histories]
    gpu.write_lists(out, cut, np.concatenate(items), np.concatenate(scores), meta)
    return meta


def run_pretrained_cloud(cfg: DictConfig, out: Path) -> dict:
    """The request curve of ``cfg`` (typed here, once) around the lists of ``llm.lists_path``; outputs under
    ``out``."""
    run = typed_run(cfg, RequestCurveSettings, REQUEST_CURVE_IGNORES)
    # Checks tracking.* now; opens nothing until the request curve logs its first epoch.
    tracker = RunTracker(out, run.tracking, run.record)
    lists_path = run.llm.lists_path
    if not lists_path:
        raise ValueError("llm.lists_path is required: the folder of lists.json + lists_*.npz")
    if not run.collab.srm_path and run.collab.srm_training != "standard":
        raise ValueError(
            "the precomputed lists hold no per-position candidates for collaborative SRM training: pass "
            "collab.srm_path=<model.pt> or collab.srm_training=standard"
        )
    split = leave_one_out(
        load_dataset(run.data.name, run.data.path, run.data.format, run.data.text_path, kcore=run.data.kcore)
    )
    cloud = load_lists(lists_path, split.num_items)
    if cloud.max_len != run.llm.max_len:
        raise ValueError(
            f"{lists_path}: lists for max_len={cloud.max_len}, but llm.max_len={run.llm.max_len}"
        )
    if cloud.k < run.collab.candidates:
        raise ValueError(
            f"{lists_path}: {cloud.k} candidates per list; collab.candidates={run.collab.candidates}"
        )
    out.mkdir(parents=True, exist_ok=True)
    log = Path(str(lists_path)) / gpu.LOG
    if log.is_file():
        shutil.copy(log, out / "cloud_log.json")
    with tracker:
        summary = run_request_curve(run, out, cast(CloudLLM, cloud), tracker)
        fewest = fewest_unseen(cloud, run)
        summary["cloud_lists"] = {
            "path": str(lists_path),
            **{k: v for k, v in cloud.info.items() if k != "chunks"},
            "fewest_unseen_in_a_test_list": fewest,
            "alone_at_10_exact": fewest >= 10,
        }
        metrics = json.loads((out / "metrics.json").read_text())
        metrics["final"]["cloud_lists"] = summary["cloud_lists"]
        write_json(out / "metrics.json", metrics)
        tracker.finish(summary)
    return summary


def fewest_unseen(cloud: PrecomputedCloud, run: RequestCurveSettings) -> int:
    """The fewest items a test user's stale list keeps once the device's seen items leave it.

    The cloud alone is ranked over the full catalogue with the device's whole history excluded; a list that
    keeps at least 10 items holds that ranking's top 10, so NDCG/HR@10 of the cloud alone are exact when this
    is 10 or more.
    """
    split = leave_one_out(
        load_dataset(run.data.name, run.data.path, run.data.format, run.data.text_path, kcore=run.data.kcore)
    )
    view = cloud_view(split, run.collab.cloud_lag, users=run.collab.cloud_users, seed=run.seed)
    histories = split.test_histories()
    fewest = cloud.k
    for start in range(0, len(histories), 1024):
        stale = pad_left([p or [] for p in view.stale_test_prompts[start : start + 1024]], cloud.max_len)
        items, _ = cloud.recommend_tensor(stale, cloud.k)
        chunk = histories[start : start + 1024]
        seen = pad_left(chunk, max(len(h) for h in chunk))
        kept = ((items[:, :, None] != seen[:, None, :]).all(dim=2) & (items > 0)).sum(dim=1)
        fewest = min(fewest, int(kept.min()))
    return fewest


@hydra.main(config_path=str(config_dir()), config_name=CONFIG_NAME, version_base="1.3")
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    """Command-line entry point (Hydra)."""
    refuse_unread_keys(cfg, CONFIG_NAME, REQUEST_CURVE_IGNORES, "the pretrained-cloud request curve")
    logging.basicConfig(level=logging.INFO)
    summary = run_pretrained_cloud(cfg, Path(HydraConfig.get().runtime.output_dir))
    emit_result(compact_summary(summary) | {"cloud_lists": summary["cloud_lists"]})


def export_main(argv: Sequence[str]) -> None:
    """``--export <saved llm> <folder> [--k K] [overrides...]``: a saved CloudLLM's lists for this config."""
    parser = argparse.ArgumentParser(prog="pretrained_cloud --export")
    parser.add_argument("llm", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--k", type=int, default=50, help="candidates per list (at least collab.candidates)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    run = typed_run(
        compose_config(list(args.overrides), CONFIG_NAME), RequestCurveSettings, REQUEST_CURVE_IGNORES
    )
    llm = CloudLLM.from_pretrained(args.llm).eval()
    print(json.dumps(export_lists(llm, request_curve_histories(run), args.out, args.k)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--export":
        export_main(sys.argv[2:])
    else:
        main()
