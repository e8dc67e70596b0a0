"""SRMs as ONNX files and ONNX Runtime scoring on the device.

:func:`export_srm` writes one of two graphs for any SRM (SASRec, GRU4Rec, DIN, TTT4Rec, SOLID):

- ``candidates``: ``(history int64 [batch, length], candidates int64 [batch, count])`` -> ``scores [batch,
  count]`` (reranking an LLM candidate list);
- ``all``: ``history -> scores [batch, num_items + 1]`` (full ranking; column 0, padding, is -inf).

Batch, history length (up to the model's ``max_len``) and candidate count are dynamic. Inside the graph the
history is left-padded to ``max_len`` first: padding never changes an SRM's outputs (tested for every model),
and it gives TTT4Rec's mini-batch loop a static trip count, which is what lets it export. The file's metadata
records the model, item count, graph kind and ``max_len``; :class:`OnnxScorer` checks them when it loads, so a
corrupt or mismatched file is refused with a message naming the file and what did not match.

Exporting re-traces the model (seconds for SASRec, more for TTT4Rec), yet from one federated round to the next
only the weights change. :meth:`OnnxRecommender.export_or_update` exports without the exporter's graph
optimisations, so every parameter stays an initializer named after it, then writes each new round's weights
into the graph already on the device instead of exporting again, and checks the updated graph against the
PyTorch model on a probe batch (exporting afresh if they ever disagree).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsc4rec.models.srm import SequentialRecommender

__all__ = [
    "GRAPH_KINDS",
    "OnnxModelError",
    "OnnxRecommender",
    "OnnxScorer",
    "export_srm",
    "parameter_signature",
    "update_weights",
]

logger = logging.getLogger(__name__)

GRAPH_KINDS = ("candidates", "all")
_METADATA_KEY = "lsc4rec"
#: The graph wrapper's attribute holding the SRM: initializer names are ``model.<state-dict key>``.
_PREFIX = "model."


class OnnxModelError(ValueError):
    """An ONNX file that cannot serve as the expected SRM (unreadable, or built for something else)."""


class _CandidateGraph(nn.Module):
    def __init__(self, model: SequentialRecommender, max_len: int) -> None:
        super().__init__()
        self.model, self.max_len = model, max_len

    def forward(self, history: Tensor, candidates: Tensor) -> Tensor:
        history = F.pad(history, (self.max_len - history.shape[1], 0))
        return self.model.score_candidates(history, candidates)


class _FullRankingGraph(nn.Module):
    def __init__(self, model: SequentialRecommender, max_len: int) -> None:
        super().__init__()
        self.model, self.max_len = model, max_len

    def forward(self, history: Tensor) -> Tensor:
        history = F.pad(history, (self.max_len - history.shape[1], 0))
        return self.model.score_all(history)


def export_srm(
    model: SequentialRecommender,
    path: str | Path,
    max_len: int,
    kind: str = "candidates",
    optimize: bool = True,
) -> Path:
    """Export ``model`` (eval mode, on the CPU) as the ``kind`` graph to ``path``; returns the path.

    ``optimize``: the exporter's graph optimisations (the fastest graph, for a device that receives a file);
    without them every parameter stays an initializer under its own name, so :func:`update_weights` can
    write later weights into the graph (a federated node re-scoring every round)."""
    if kind not in GRAPH_KINDS:
        raise ValueError(f"ONNX graph kind must be one of {list(GRAPH_KINDS)}, got {kind!r}")
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 for an ONNX export, got {max_len}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model = model.eval()
    history = torch.zeros(2, min(max_len, 4), dtype=torch.long)
    history[:, -1] = 1
    batch = torch.export.Dim("batch")
    length = torch.export.Dim("length", min=1, max=max_len)
    if kind == "candidates":
        graph: nn.Module = _CandidateGraph(model, max_len)
        args: tuple = (history, torch.ones(2, 3, dtype=torch.long))
        names = ["history", "candidates"]
        shapes = {"history": {0: batch, 1: length}, "candidates": {0: batch, 1: torch.export.Dim("count")}}
    else:
        graph = _FullRankingGraph(model, max_len)
        args = (history,)
        names = ["history"]
        shapes = {"history": {0: batch, 1: length}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                graph,
                args,
                input_names=names,
                output_names=["scores"],
                dynamic_shapes=shapes,
                dynamo=True,
                optimize=optimize,
                verbose=False,
            )
        except Exception as error:  # the exporter raises many types; a user's model may hit any of them
            model.train(was_training)
            reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise OnnxModelError(
                f"{type(model).__name__} cannot be exported to ONNX ({reason[:300]}); an SRM must be "
                "traceable by torch.export (docs/custom_model.md); runtime=torch serves it through PyTorch"
            ) from error
    metadata = {
        "model": type(model).__name__,
        "num_items": int(model.num_items),
        "kind": kind,
        "max_len": int(max_len),
        "inputs": names,
        "parameters": parameter_signature(model),
    }
    program.model.metadata_props[_METADATA_KEY] = json.dumps(metadata)
    program.save(str(path))
    model.train(was_training)
    return path


def parameter_signature(model: SequentialRecommender) -> str:
    """A digest of the model's architecture as the graph sees it: class, state-dict keys, shapes, dtypes."""
    parts = [type(model).__name__]
    parts += [f"{key}:{tuple(value.shape)}:{value.dtype}" for key, value in model.state_dict().items()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def update_weights(path: str | Path, model: SequentialRecommender) -> int:
    """Write ``model``'s weights into the exported graph at ``path`` (same architecture, see
    :func:`parameter_signature`); return how many initializers changed. Raises :class:`OnnxModelError` when
    the file was exported for another architecture or lacks one of the model's parameters."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # onnx raises its own types for a broken file
        raise OnnxModelError(f"{path}: not a loadable ONNX model ({str(error).splitlines()[0]})") from None
    stored = {p.key: p.value for p in proto.metadata_props}.get(_METADATA_KEY)
    metadata = json.loads(stored) if stored else {}
    if metadata.get("parameters") != parameter_signature(model):
        raise OnnxModelError(f"{path}: exported for another architecture than this {type(model).__name__}")
    state = {_PREFIX + key: value.detach().cpu() for key, value in model.state_dict().items()}
    # Buffers outside the state dict change too (SOLID's item -> semantic token table follows the codebook).
    buffers = {_PREFIX + key: value.detach().cpu() for key, value in model.named_buffers()}
    found = 0
    for initializer in proto.graph.initializer:
        value = state.get(initializer.name, buffers.get(initializer.name))
        if value is not None:
            initializer.CopyFrom(numpy_helper.from_array(value.numpy(), initializer.name))
            found += initializer.name in state
    if found != len(state):
        raise OnnxModelError(f"{path}: {len(state) - found} of the model's parameters are not in the graph")
    temporary = path.with_suffix(".updating")
    onnx.save(proto, str(temporary))
    temporary.replace(path)
    return found


class OnnxScorer:
    """ONNX Runtime session for an exported SRM: scores histories (and candidates) as numpy arrays."""

    def __init__(
        self,
        path: str | Path,
        num_items: int | None = None,
        kind: str | None = None,
        threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        """Load ``path``; ``num_items``/``kind``, when given, must match what the file was exported for.

        ``providers``: ONNX Runtime execution providers in order of preference (e.g. ``CUDAExecutionProvider``
        then ``CPUExecutionProvider`` with onnxruntime-gpu on a Jetson); each must be available here.
        """
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        available = ort.get_available_providers()
        missing = [name for name in providers if name not in available]
        if not providers or missing:
            raise OnnxModelError(
                f"ONNX Runtime execution providers {missing or list(providers)} are not available in this "
                f"onnxruntime build (available: {available})"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        # ONNX Runtime's own C++ log: errors only (its graph optimiser's notes, e.g. CastLike nodes it cannot
        # fold, are nothing a user can act on).
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=list(providers)
            )
        except Exception as error:  # onnxruntime raises its own exception types for a broken file
            raise OnnxModelError(
                f"{self.path}: not a loadable ONNX model ({str(error).splitlines()[0]})"
            ) from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(_METADATA_KEY)
        if raw is None:
            raise OnnxModelError(f"{self.path}: no lsc4rec metadata; export it with lsc4rec's export_srm")
        self.metadata = json.loads(raw)
        if num_items is not None and int(self.metadata["num_items"]) != int(num_items):
            raise OnnxModelError(
                f"{self.path}: exported for {self.metadata['num_items']} items, "
                f"this catalogue has {num_items}"
            )
        if kind is not None and self.metadata["kind"] != kind:
            raise OnnxModelError(f"{self.path}: a {self.metadata['kind']!r} graph, expected {kind!r}")
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != self.metadata["inputs"]:
            raise OnnxModelError(
                f"{self.path}: graph inputs {inputs} differ from its metadata {self.metadata['inputs']}"
            )

    @property
    def max_len(self) -> int:
        """Longest history the graph takes (longer ones keep their most recent items)."""
        return int(self.metadata["max_len"])

    def _history(self, history: np.ndarray) -> np.ndarray:
        history = np.ascontiguousarray(history, dtype=np.int64)
        if history.ndim != 2 or history.shape[1] < 1:
            raise ValueError(f"history must be [batch, length >= 1], got shape {history.shape}")
        bad = (history < 0) | (history > int(self.metadata["num_items"]))
        if bad.any():
            raise ValueError(
                f"history holds item id {int(history[bad][0])}, outside 0..{self.metadata['num_items']}"
            )
        return history[:, -self.max_len :]

    def score_candidates(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Scores ``[batch, count]`` of ``candidates`` after a left-padded ``history``."""
        if self.metadata["kind"] != "candidates":
            raise OnnxModelError(f"{self.path}: a full-ranking graph cannot score candidate lists")
        candidates = np.ascontiguousarray(candidates, dtype=np.int64)
        return self.session.run(None, {"history": self._history(history), "candidates": candidates})[0]

    def score_all(self, history: np.ndarray) -> np.ndarray:
        """Scores ``[batch, num_items + 1]`` of every item after ``history`` (an ``all`` graph)."""
        if self.metadata["kind"] != "all":
            raise OnnxModelError(f"{self.path}: a candidate graph cannot rank the whole catalogue")
        return self.session.run(None, {"history": self._history(history)})[0]


class OnnxRecommender(nn.Module):
    """An exported SRM behind the scoring interface the evaluation code uses (``score_all``,
    ``score_candidates``), answered by ONNX Runtime: drop-in for :func:`lsc4rec.training.evaluate`.
    """

    def __init__(self, scorers: dict[str, OnnxScorer], num_items: int) -> None:
        """Wrap one scorer per graph kind (``candidates`` and/or ``all``)."""
        super().__init__()
        self.scorers = scorers
        self.num_items = int(num_items)

    @classmethod
    def export(
        cls,
        model: SequentialRecommender,
        directory: str | Path,
        max_len: int,
        kinds: tuple[str, ...] = GRAPH_KINDS,
        threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        optimize: bool = True,
    ) -> OnnxRecommender:
        """Export ``model``'s graphs into ``directory`` (overwriting) and open them with ONNX Runtime."""
        for kind in kinds:
            export_srm(model, Path(directory) / f"srm-{kind}.onnx", max_len, kind, optimize=optimize)
        return cls.open(directory, model.num_items, kinds, threads, providers)

    @classmethod
    def open(
        cls,
        directory: str | Path,
        num_items: int,
        kinds: tuple[str, ...] = GRAPH_KINDS,
        threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> OnnxRecommender:
        """Open the ``srm-<kind>.onnx`` graphs in ``directory`` (each checked against ``num_items``)."""
        scorers = {
            kind: OnnxScorer(
                Path(directory) / f"srm-{kind}.onnx",
                num_items=num_items,
                kind=kind,
                threads=threads,
                providers=providers,
            )
            for kind in kinds
        }
        return cls(scorers, num_items)

    @classmethod
    def export_or_update(
        cls,
        model: SequentialRecommender,
        directory: str | Path,
        max_len: int,
        kinds: tuple[str, ...] = GRAPH_KINDS,
        threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> tuple[OnnxRecommender, dict[str, float]]:
        """Like :meth:`export`, but a graph already in ``directory`` for the same architecture only gets the
        new weights; the result is checked against ``model`` on a probe batch, and a disagreement falls back
        to a fresh export. Returns the recommender and what it cost (``onnx-export-seconds``,
        ``onnx-weights-updated``: 1 when every graph was updated in place, 0 when one was exported)."""
        start = time.perf_counter()
        directory = Path(directory)
        updated = True
        for kind in kinds:
            path = directory / f"srm-{kind}.onnx"
            try:
                if not path.is_file():
                    raise OnnxModelError(f"{path}: not exported yet")
                update_weights(path, model)
            except OnnxModelError:
                updated = False
                export_srm(model, path, max_len, kind, optimize=False)
        recommender = cls.open(directory, model.num_items, kinds, threads, providers)
        if updated and not recommender.agrees_with(model, max_len):
            logger.warning("ONNX graphs with updated weights disagree with the model: exporting afresh")
            return cls.export(model, directory, max_len, kinds, threads, providers, optimize=False), {
                "onnx-export-seconds": time.perf_counter() - start,
                "onnx-weights-updated": 0.0,
            }
        return recommender, {
            "onnx-export-seconds": time.perf_counter() - start,
            "onnx-weights-updated": float(updated),
        }

    def agrees_with(self, model: SequentialRecommender, max_len: int, tolerance: float = 1e-4) -> bool:
        """True when every graph scores a fixed probe batch as ``model`` does (finite scores within
        ``tolerance``, the same entries infinite)."""
        generator = torch.Generator().manual_seed(0)
        length = min(max_len, 6)
        history = torch.randint(1, model.num_items + 1, (3, length), generator=generator)
        history[0, : length // 2] = 0  # a left-padded row
        was_training = model.training
        model.eval()
        padded = F.pad(history, (max_len - length, 0))
        with torch.no_grad():
            pairs = []
            if "all" in self.scorers:
                pairs.append((self.score_all(history), model.score_all(padded)))
            if "candidates" in self.scorers:
                candidates = torch.randint(1, model.num_items + 1, (3, 4), generator=generator)
                pairs.append(
                    (self.score_candidates(history, candidates), model.score_candidates(padded, candidates))
                )
        model.train(was_training)
        for ours, reference in pairs:
            finite = torch.isfinite(reference)
            if not torch.equal(finite, torch.isfinite(ours)):
                return False
            if finite.any() and float((ours[finite] - reference[finite]).abs().max()) > tolerance:
                return False
        return True

    def _scorer(self, kind: str) -> OnnxScorer:
        if kind not in self.scorers:
            raise OnnxModelError(
                f"no {kind!r} graph was exported for this device (exported: {sorted(self.scorers)})"
            )
        return self.scorers[kind]

    def score_all(self, history: Tensor) -> Tensor:
        """Next-item scores ``[B, num_items + 1]`` (column 0 = -inf) from ONNX Runtime."""
        return torch.from_numpy(self._scorer("all").score_all(history.cpu().numpy()))

    def score_candidates(self, history: Tensor, candidates: Tensor) -> Tensor:
        """Scores ``[B, C]`` of ``candidates`` from ONNX Runtime (id 0 = -inf).

        Without a ``candidates`` graph, the ``all`` graph's scores are gathered at the candidates: one export
        serves both, at the cost of scoring the whole catalogue.
        """
        if "candidates" not in self.scorers and "all" in self.scorers:
            every = self.score_all(history)
            scores = every.gather(1, candidates.long().clamp(min=0))
            return scores.masked_fill(candidates == 0, float("-inf"))
        scores = self._scorer("candidates").score_candidates(history.cpu().numpy(), candidates.cpu().numpy())
        return torch.from_numpy(scores)
