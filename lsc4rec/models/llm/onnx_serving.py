"""The cloud LLM's candidate lists through ONNX Runtime: the next-item scoring pass, exported once, on CPU.

Serving asks one thing of the LLM: the log-probability of every item after a history.
:class:`OnnxCandidateSource` exports that pass (item tokens and mask ``[batch, max_len + 1]`` -> item
log-probabilities ``[batch, num_items]``, the text-grounded tables folded in as constants) and answers
:meth:`recommend` with ONNX Runtime, excluding each history's items and taking the top ``n`` as
:meth:`CloudLLM.recommend` does (with one token per item its beam search is exactly that top-``n``). On this
project's 2-core CPU the exported pass runs 3-4x faster than the PyTorch model
(``benchmarks/candidate_service_throughput.py``). After exporting it checks its scores against the PyTorch
model on a probe batch and refuses to serve if they disagree.

Only an LLM with one token per item that reads item tokens can be served this way
(:func:`onnx_serving_problem`); per-position candidates (collaborative training) stay with the PyTorch model.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lsc4rec.data import pad_left
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.models.llm.recommender import CloudLLM

__all__ = ["OnnxCandidateSource", "onnx_serving_problem"]

logger = logging.getLogger(__name__)

#: Largest difference allowed between ONNX Runtime's and PyTorch's item log-probabilities on the probe batch.
PROBE_TOLERANCE = 1e-3


def onnx_serving_problem(llm: CloudLLM) -> str | None:
    """Why ``llm`` cannot be served through ONNX Runtime, or None when it can."""
    if llm.tokenizer.depth != 1:
        return "its items are several tokens each (llm.item_tokens=semantic) and need a beam search"
    if llm.prompt is not None:
        return "it reads histories as title prompts (llm.history_format=titles)"
    if llm.device.type != "cpu":
        return f"it is on {llm.device} and ONNX Runtime serves on the CPU here"
    return None


class _ItemScoring(nn.Module):
    """The exported pass: item log-probabilities at the last position, the embedding tables as constants."""

    def __init__(self, llm: CloudLLM) -> None:
        super().__init__()
        self.base = llm.lm.base_model
        with torch.no_grad():
            rows = llm.text_rows()
            embed = llm.lm.get_input_embeddings().weight
            head = llm.lm.get_output_embeddings()
            self.register_buffer("inputs", (embed if rows is None else embed[: rows.shape[0]] + rows).clone())
            outputs = head.weight if rows is None else llm._item_output_table(head.weight, rows)
            self.register_buffer("outputs", outputs.clone())
            bias = head.bias if head.bias is not None else torch.zeros(outputs.shape[0])
            self.register_buffer("bias", bias[: outputs.shape[0]].clone())
            self.register_buffer("item_columns", llm.tokenizer.codes[1:, 0].clone())

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        embeds = nn.functional.embedding(tokens, self.inputs)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.base(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions)
        last = hidden.last_hidden_state[:, -1]
        logprobs = torch.log_softmax(nn.functional.linear(last, self.outputs, self.bias), dim=-1)
        return logprobs[:, self.item_columns]


class OnnxCandidateSource:
    """A :class:`~lsc4rec.models.llm.candidates.CandidateSource`: a CloudLLM's lists from ONNX Runtime.

    Holds the LLM too (``position_candidates`` and the service's checks read it); ``batch_size`` is the LLM's.
    ``threads`` is ONNX Runtime's intra-op thread count (default: PyTorch's). The export is a snapshot of the
    weights: build a new source after the LLM changes.
    """

    def __init__(self, llm: CloudLLM, threads: int | None = None, model_version: str | None = None) -> None:
        """Export ``llm``'s scoring pass, load it into ONNX Runtime and check it against PyTorch.

        ValueError when the LLM cannot be served this way (:func:`onnx_serving_problem`) or the exported
        graph's scores differ from the model's by more than :data:`PROBE_TOLERANCE`.
        """
        problem = onnx_serving_problem(llm)
        if problem:
            raise ValueError(f"the cloud LLM cannot be served through ONNX Runtime: {problem}")
        import onnxruntime as ort

        self.llm = llm
        self.tokenizer = llm.tokenizer
        self.prompt = llm.prompt
        self.batch_size = llm.batch_size
        self.model_version = model_version or "cloud-llm-onnx"
        started = time.perf_counter()
        llm.eval()
        graph = _ItemScoring(llm).eval()
        tokens, mask = llm.encode(pad_left([[1], [1, 2]], llm.max_len))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on HF internals, not ours to act on
            program = torch.onnx.export(
                graph,
                (tokens, mask),
                input_names=["tokens", "mask"],
                output_names=["item_logprobs"],
                dynamo=True,
                dynamic_shapes={"tokens": {0: "batch"}, "mask": {0: "batch"}},
                verbose=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            program.model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self._check_against(llm)
        logger.info(
            "cloud LLM scoring pass exported to ONNX Runtime in %.1f s (%d threads)",
            time.perf_counter() - started,
            options.intra_op_num_threads,
        )

    @property
    def num_items(self) -> int:
        """Catalogue size."""
        return self.llm.num_items

    @property
    def max_history(self) -> int:
        """Longest history read (the LLM's ``max_len``; longer ones keep their most recent items)."""
        return self.llm.max_len

    def item_logprobs(self, histories: Tensor) -> np.ndarray:
        """Log-probabilities ``[B, num_items]`` (column ``i - 1`` = item ``i``) after left-padded
        ``histories [B, max_len]``."""
        tokens, mask = self.llm.encode(histories[:, -self.llm.max_len :])
        feeds = {"tokens": tokens.numpy(), "mask": mask.numpy()}
        return self._session.run(None, feeds)[0]

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        """Top-``n`` items per history (never one of its items), best first, with their log-probabilities;
        slots past the allowed items hold item 0 and ``-inf`` (as :meth:`CloudLLM.recommend`)."""
        if len(histories) == 0:
            return CandidateList(np.zeros((0, n), dtype=np.int64), np.zeros((0, n), dtype=np.float32))
        padded = pad_left(histories, self.llm.max_len)
        out_items, out_scores = [], []
        for start in range(0, padded.shape[0], self.batch_size):
            chunk = padded[start : start + self.batch_size]
            scores = torch.from_numpy(self.item_logprobs(chunk))
            seen = chunk > 0
            rows = torch.arange(chunk.shape[0]).unsqueeze(1).expand_as(chunk)
            scores[rows[seen], chunk[seen] - 1] = float("-inf")
            top = scores.topk(min(n, self.num_items), dim=1)
            items = (top.indices + 1).masked_fill(torch.isinf(top.values), 0)
            out_items.append(items)
            out_scores.append(top.values)
        items, scores = torch.cat(out_items), torch.cat(out_scores)
        if items.shape[1] < n:  # a catalogue smaller than n: empty slots
            pad = n - items.shape[1]
            items = torch.cat([items, torch.zeros(items.shape[0], pad, dtype=torch.long)], dim=1)
            scores = torch.cat([scores, torch.full((scores.shape[0], pad), float("-inf"))], dim=1)
        return CandidateList(items.numpy(), scores.float().numpy())

    def position_candidates(self, inputs: Tensor, k: int) -> Tensor:
        """The PyTorch model's top-``k`` next items after every position
        (:meth:`CloudLLM.position_candidates`)."""
        return self.llm.position_candidates(inputs, k)

    def position_candidate_scores(self, inputs: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """:meth:`position_candidates` with the PyTorch model's scores of those items
        (:meth:`CloudLLM.position_candidate_scores`: the soft targets of list distillation)."""
        return self.llm.position_candidate_scores(inputs, k)

    def _check_against(self, llm: CloudLLM) -> None:
        """Compare ONNX Runtime with PyTorch on a probe batch of histories of every length."""
        generator = torch.Generator().manual_seed(0)
        lengths = torch.linspace(1, llm.max_len, steps=8).long().tolist()
        probe = [
            torch.randint(1, llm.num_items + 1, (length,), generator=generator).tolist() for length in lengths
        ]
        padded = pad_left(probe, llm.max_len)
        expected = llm.item_scores(padded)[:, 1:].numpy()
        actual = self.item_logprobs(padded)
        gap = float(np.abs(actual - expected).max())
        if not gap <= PROBE_TOLERANCE:
            raise ValueError(
                f"the ONNX export of the cloud LLM disagrees with the PyTorch model by {gap:.2e} "
                f"(> {PROBE_TOLERANCE:g}) on a probe batch; serve with collab.service_runtime=torch"
            )
