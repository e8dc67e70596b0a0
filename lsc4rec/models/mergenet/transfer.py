"""MergeNet training: which parameters pair, the transfer cycle, and the baselines' hooks.

:class:`MergeNetTransfer` is a training hook (:class:`~lsc4rec.training.TrainingHook`): every ``t_cycle``
steps it computes ``θ' = adapter(θ_target, factors(θ_source))`` and writes it into the target, the models
take their normal step, and the adapter learns from that step. Two learning signals (``mergenet.signal``):

* ``gradient`` (default): the target's task-loss gradient at ``θ'`` is pushed through the adapter
  (``∂L/∂φ = ∂L/∂θ' · ∂θ'/∂φ``), so the adapter descends the target's own loss: the hypernetwork rule.
* ``step``: ``½‖θ' − θ_after‖²`` with the target's post-step parameters (papers.md §4.2, the released code's
  rule). Under plain SGD the two coincide up to the learning rate; under Adam the step is the optimizer's
  normalised update, whose size carries no information about the loss, and the adapter learns to repeat it.

:class:`SourceTraining` lets the source take its normal step alongside; :class:`Distillation` is the
knowledge-distillation baseline (a KL term towards the LLM's next-item distribution).

Parameter names (``mergenet.source`` / ``mergenet.target``): ``llm.item_embeddings`` (the LLM's item-token
rows, tied with its output head), ``srm.item_embeddings`` (the SRM's item table, tied with its classifier), or
``llm:<parameter name>`` / ``srm:<parameter name>`` for any 2-D parameter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsc4rec.data import TrainBatches
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.models.mergenet.adapter import ParameterAdapter, low_rank_factors
from lsc4rec.models.mergenet.mergenet_config import MergeNetSettings
from lsc4rec.models.srm import SequentialRecommender, list_distillation_loss

__all__ = [
    "Distillation",
    "ListDistillation",
    "MergeNetTransfer",
    "ParameterSlice",
    "SourceTraining",
    "resolve_slice",
]


class _Hook:
    """No-op training hook (the protocol of ``lsc4rec.training.TrainingHook``, kept here so that ``models``
    never imports the training loop)."""

    def before_step(self, model: SequentialRecommender, inputs: Tensor, targets: Tensor) -> None:
        """Called before the batch's forward pass."""

    def extra_loss(self, model: SequentialRecommender, inputs: Tensor, targets: Tensor) -> Tensor | None:
        """A term added to this step's loss, or None."""
        return None

    def after_step(self, model: SequentialRecommender) -> None:
        """Called after the optimizer step."""


@dataclass
class ParameterSlice:
    """A matrix inside a model's parameter (all of it, or some rows): what a transfer reads and writes.

    ``offset`` (when set) is a part the model adds to these rows that the parameter does not hold, e.g. the
    projected item text of a text-grounded LLM's item tokens: the slice's value is parameter + offset (what
    the model actually uses), and assigning a value writes value − offset into the parameter.
    """

    parameter: nn.Parameter
    rows: Tensor | None
    name: str
    offset: Callable[[], Tensor] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the slice."""
        rows = self.parameter.shape[0] if self.rows is None else int(self.rows.numel())
        return int(rows), int(self.parameter.shape[1])

    def value(self) -> Tensor:
        """A detached CPU float copy of the slice."""
        data = self.parameter.detach()
        data = data if self.rows is None else data[self.rows.to(data.device)]
        data = data.float().cpu().clone()
        return data if self.offset is None else data + self._offset()

    def _offset(self) -> Tensor:
        assert self.offset is not None
        offset = self.offset().detach().float().cpu()
        if tuple(offset.shape) != self.shape:
            raise ValueError(f"{self.name}: offset has shape {tuple(offset.shape)}, the slice {self.shape}")
        return offset

    def gradient(self) -> Tensor | None:
        """A detached CPU float copy of the slice's current gradient, or None when it has none."""
        grad = self.parameter.grad
        if grad is None:
            return None
        grad = grad if self.rows is None else grad[self.rows.to(grad.device)]
        return grad.detach().float().cpu().clone()

    def assign(self, value: Tensor) -> None:
        """Overwrite the slice in place (the model keeps its parameter object and optimizer state)."""
        with torch.no_grad():
            value = value.detach()
            if self.offset is not None:
                value = value.float().cpu() - self._offset()
            value = value.to(self.parameter.device, self.parameter.dtype)
            if self.rows is None:
                self.parameter.copy_(value)
            else:
                self.parameter[self.rows.to(self.parameter.device)] = value


def _named_matrix(module: nn.Module, name: str, owner: str) -> nn.Parameter:
    parameters = dict(module.named_parameters())
    if name not in parameters:
        matrices = [n for n, p in parameters.items() if p.ndim == 2][:8]
        raise ValueError(f"{owner} has no parameter {name!r}; 2-D parameters include {matrices}")
    parameter = parameters[name]
    if parameter.ndim != 2:
        raise ValueError(
            f"{owner} parameter {name!r} has shape {tuple(parameter.shape)}: MergeNet pairs matrices"
        )
    return parameter


def resolve_slice(spec: str, srm: SequentialRecommender, llm: CloudLLM) -> ParameterSlice:
    """The parameter slice ``spec`` names (see the module docstring)."""
    if spec == "srm.item_embeddings":
        return ParameterSlice(srm.item_embedding.weight, torch.arange(1, srm.num_items + 1), spec)
    if spec == "llm.item_embeddings":
        if llm.tokenizer.depth != 1:
            raise ValueError("llm.item_embeddings needs one token per item (llm.item_tokens=item)")
        tokens = llm.tokenizer.codes[1:, 0].clone()
        offset = None
        if llm.text_part is not None:
            # A text-grounded LLM's item token is its id row plus its projected text: transfer the whole.
            def offset() -> Tensor:
                with torch.no_grad():
                    return llm.text_rows()[tokens.to(llm.device)]

        return ParameterSlice(llm.lm.get_input_embeddings().weight, tokens, spec, offset)
    owner, _, name = spec.partition(":")
    if owner == "srm" and name:
        return ParameterSlice(_named_matrix(srm, name, "the SRM"), None, spec)
    if owner == "llm" and name:
        return ParameterSlice(_named_matrix(llm.lm, name, "the cloud LLM"), None, spec)
    raise ValueError(
        f"mergenet parameter {spec!r}: use llm.item_embeddings, srm.item_embeddings, llm:<name> or srm:<name>"
    )


@dataclass
class TransferStats:
    """What the transfers cost and how far the adapter's output moved the target."""

    transfers: int = 0
    seconds: float = 0.0
    adapter_losses: list[float] = field(default_factory=list)
    relative_changes: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Counts, time and the mean of the last losses/changes."""
        tail = self.adapter_losses[-50:]
        change = self.relative_changes[-50:]
        return {
            "transfers": self.transfers,
            "transfer_seconds": round(self.seconds, 2),
            "ms_per_transfer": round(1000 * self.seconds / max(self.transfers, 1), 2),
            "adapter_loss_recent": sum(tail) / max(len(tail), 1),
            "relative_change_recent": sum(change) / max(len(change), 1),
        }


class MergeNetTransfer(_Hook):
    """Every ``t_cycle`` steps: target ← adapter(target, source factors); adapter learns from the step."""

    def __init__(
        self,
        target: ParameterSlice,
        source: ParameterSlice,
        rank: int = 16,
        t_cycle: int = 2,
        num_layers: int = 2,
        attention_dim: int = 64,
        heads: int = 4,
        dropout: float = 0.1,
        lr: float = 1e-4,
        weight_decay: float = 5e-4,
        grad_clip: float = 50.0,
        seed: int = 0,
        max_change: float = 0.05,
        signal: str = "gradient",
        aligned: bool | str = "auto",
    ) -> None:
        """Pair ``source`` -> ``target`` with a fresh adapter; see ``conf/mergenet/default.yaml``.

        ``aligned="auto"``: row-aligned when both slices are item tables (the same items, row for row).
        """
        if t_cycle < 1:
            raise ValueError(f"mergenet.t_cycle must be >= 1, got {t_cycle}")
        if signal not in ("gradient", "step"):
            raise ValueError(f"mergenet.signal must be 'gradient' or 'step', got {signal!r}")
        self.signal = signal
        self.target, self.source = target, source
        self.rank, self.t_cycle, self.grad_clip, self.seed = int(rank), int(t_cycle), float(grad_clip), seed
        torch.manual_seed(seed)
        if aligned == "auto":
            aligned = target.name.endswith("item_embeddings") and source.name.endswith("item_embeddings")
        if not isinstance(aligned, bool):
            raise ValueError(f"mergenet.aligned must be auto, true or false, got {aligned!r}")
        self.adapter = ParameterAdapter(
            target.shape, source.shape, num_layers, attention_dim, heads, dropout, max_change, aligned
        )
        # Bias/norm parameters are not decayed (the released recipe).
        decay = [p for n, p in self.adapter.named_parameters() if p.ndim >= 2 and "norm" not in n]
        no_decay = [p for n, p in self.adapter.named_parameters() if p.ndim < 2 or "norm" in n]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
        )
        self.steps = 0
        self.pending: Tensor | None = None
        self.stats = TransferStats()

    @classmethod
    def from_config(
        cls,
        mergenet_cfg: MergeNetSettings,
        target: ParameterSlice,
        source: ParameterSlice,
        seed: int = 0,
        t_cycle: int | None = None,
        signal: str | None = None,
    ) -> MergeNetTransfer:
        """The transfer ``conf/mergenet`` describes (``t_cycle`` / ``signal`` override ``mergenet.*``)."""
        m = mergenet_cfg
        return cls(
            target,
            source,
            rank=m.rank,
            t_cycle=m.t_cycle if t_cycle is None else int(t_cycle),
            num_layers=m.num_layers,
            attention_dim=m.attention_dim,
            heads=m.heads,
            dropout=m.dropout,
            lr=m.lr,
            weight_decay=m.weight_decay,
            grad_clip=m.grad_clip,
            seed=seed,
            max_change=m.max_change,
            signal=m.signal if signal is None else signal,
            aligned=m.aligned,
        )

    def transfer(self) -> Tensor:
        """Compute ``θ'`` (with the adapter's graph), write it into the target and return it."""
        start = time.perf_counter()
        u, v = low_rank_factors(self.source.value(), self.rank, self.seed)
        before = self.target.value()
        self.adapter.train()
        new = self.adapter(before, u, v)
        self.target.assign(new)
        self.stats.transfers += 1
        self.stats.relative_changes.append(
            float((new.detach() - before).norm() / before.norm().clamp(min=1e-12))
        )
        self.stats.seconds += time.perf_counter() - start
        return new

    def learn(self, proposed: Tensor) -> float:
        """One adapter step from the target step that followed the transfer ``proposed``.

        ``signal=gradient`` needs the target's gradient of that step (its ``.grad``, still set after the
        optimizer step); a step without one (the target not in the loss) teaches nothing and is skipped.
        Returns the surrogate loss (``step``) or the gradient's norm (``gradient``).
        """
        start = time.perf_counter()
        if self.signal == "gradient":
            grad = self.target.gradient()
            if grad is None:
                return 0.0
            loss = (proposed * grad).sum()
            reported = float(grad.norm())
        else:
            loss = 0.5 * (proposed - self.target.value()).pow(2).sum()
            reported = float(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), self.grad_clip)
        self.optimizer.step()
        self.stats.adapter_losses.append(reported)
        self.stats.seconds += time.perf_counter() - start
        return reported

    def before_step(self, model: SequentialRecommender, inputs: Tensor, targets: Tensor) -> None:
        """Transfer on the cycle's first step."""
        if self.steps % self.t_cycle == 0:
            self.pending = self.transfer()
        self.steps += 1

    def after_step(self, model: SequentialRecommender) -> None:
        """Learn from the step that followed a transfer."""
        if self.pending is not None:
            self.learn(self.pending)
            self.pending = None


class SourceTraining(_Hook):
    """The cloud LLM takes its own training step (on its own sequences) after every SRM step."""

    def __init__(
        self, llm: CloudLLM, sequences: Sequence[Sequence[int]], lr: float = 1e-3, seed: int = 0
    ) -> None:
        self.llm = llm
        self.batches = TrainBatches(sequences, llm.max_len, 128, seed=seed)
        self.optimizer = torch.optim.AdamW(llm.parameters(), lr=lr, weight_decay=0.01)
        self.epoch = 0
        self._iterator: Iterator = iter(())
        self.steps = 0

    def _next_rows(self) -> Tensor:
        try:
            inputs, targets = next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self.batches.set_epoch(self.epoch)
            self._iterator = iter(self.batches)
            inputs, targets = next(self._iterator)
        return torch.cat([inputs, targets[:, -1:]], dim=1)

    def after_step(self, model: SequentialRecommender) -> None:
        """One LLM step."""
        self.llm.train()
        loss = self.llm.loss(self._next_rows())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.llm.parameters(), 1.0)
        self.optimizer.step()
        self.steps += 1


class Distillation(_Hook):
    """KD baseline: ``β·T²·KL(p_LLM^T ‖ p_SRM^T)`` over all items at every trained position."""

    def __init__(self, teacher: CloudLLM, weight: float = 1.0, temperature: float = 2.0) -> None:
        if weight < 0 or temperature <= 0:
            raise ValueError(
                f"distillation needs weight >= 0 and temperature > 0, got {weight}, {temperature}"
            )
        self.teacher, self.weight, self.temperature = teacher, float(weight), float(temperature)

    def extra_loss(self, model: SequentialRecommender, inputs: Tensor, targets: Tensor) -> Tensor | None:
        """The KL term for this batch."""
        positions = targets > 0
        if not bool(positions.any()) or self.weight == 0.0:
            return None
        teacher = self.teacher.position_item_logits(inputs, positions).to(inputs.device)
        student = model.position_item_logits(inputs, positions)
        if teacher.shape != student.shape:
            raise ValueError(
                "teacher and student disagree on positions/items: "
                f"{tuple(teacher.shape)} vs {tuple(student.shape)} (llm.max_len must cover data.max_len)"
            )
        t = self.temperature
        kl = F.kl_div(
            F.log_softmax(student / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        return self.weight * t * t * kl


class ListDistillation(_Hook):
    """KD through the product's channel: ``β·T²·KL`` over only the ``k`` items the LLM lists per position.

    What a device can receive: the cloud's top-``k`` list after each prefix with its scores, never the whole
    distribution (:func:`lsc4rec.models.srm.list_distillation_loss`). :class:`Distillation` over all items
    is its upper bound.
    """

    def __init__(self, teacher: CloudLLM, k: int, weight: float = 1.0, temperature: float = 2.0) -> None:
        if k < 1 or weight < 0 or temperature <= 0:
            raise ValueError(
                f"list distillation needs k >= 1, weight >= 0 and temperature > 0, got {k}, {weight}, "
                f"{temperature}"
            )
        self.teacher, self.k = teacher, int(k)
        self.weight, self.temperature = float(weight), float(temperature)

    def extra_loss(self, model: SequentialRecommender, inputs: Tensor, targets: Tensor) -> Tensor | None:
        """The list-KL term for this batch."""
        if self.weight == 0.0 or not bool((targets > 0).any()):
            return None
        items, scores = self.teacher.position_candidate_scores(inputs.cpu(), self.k)
        loss = list_distillation_loss(
            model, inputs, targets, items.to(inputs.device), scores.to(inputs.device), self.temperature
        )
        return self.weight * loss
