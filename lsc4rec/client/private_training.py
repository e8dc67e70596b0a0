"""Local differential privacy on a device node: DP-SGD with Opacus and a privacy ledger that spans rounds.

The privacy unit is one **device**, i.e. one user's whole training sequence (the project's devices are users,
``DESIGN.md`` §1): every training example is one user's sequence, Poisson-sampled into batches, its gradient
clipped to ``privacy.clipping_norm`` and Gaussian noise added (Opacus' ``PrivacyEngine``). So the ε a node
reports bounds what its released updates reveal about any one of its users, over all rounds so far.

Per-sample gradients come from one of three engines (``privacy.grad_sample_mode``):

* ``rows`` — each example's gradient over only the item rows it reads, by ``torch.func``
  (:mod:`lsc4rec.client.dp_rows`), clipped exactly and noised and accounted as Opacus does: the fast path
  for ``sampled_softmax`` and ``bce`` (``auto``'s choice there), any SRM.
* ``hooks`` — Opacus' per-layer hooks (its standard path). Needs every parameter use to go through a module,
  so the tied full-catalogue product of the full softmax is invisible to it: only ``sampled_softmax`` and
  ``bce`` qualify, and TTT4Rec's fast weights are not covered. ``nn.GRU`` is swapped for Opacus' ``DPGRU``
  (``ModuleValidator.fix``); SASRec already uses plain ``nn.Linear`` attention instead of
  ``nn.MultiheadAttention``, so nothing needs replacing there.
* ``functorch`` — the whole model's per-sample gradients by ``torch.func`` (``vmap`` of ``grad`` over rows),
  handed to Opacus' optimizer through its ``no_op`` mode: any SRM (TTT4Rec, SOLID) and any loss (full
  softmax included), the choice of ``auto`` for the full softmax.

A large Poisson batch can be computed in chunks (``privacy.physical_batch_size``, Opacus' "physical" batches):
each chunk's examples are clipped and added to the batch's sum, the noise is added once per batch and the
optimizer steps once, so the mechanism and its ε are those of the whole batch; only the peak memory drops.

Accounting: Opacus' RDP accountant history ``[(noise multiplier, sample rate, steps), ...]`` of every earlier
round (the node's ledger, :mod:`lsc4rec.client.privacy_ledger`) is composed with this round's, so ε is
cumulative. A noise multiplier can be given, or derived from ``privacy.target_epsilon`` for the whole planned
run. A node whose next round would push ε past ``privacy.max_epsilon`` does not train and says so.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from lsc4rec.client.local_training import load_optimizer_arrays, optimizer_state_arrays
from lsc4rec.data import TrainBatches
from lsc4rec.messages import DEVICES, EPSILON, NUM_EXAMPLES, PRIVACY_EXHAUSTED, TRAIN_LOSS
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.models.srm.losses import draw_negatives, per_sequence_loss, per_sequence_rerank_loss
from lsc4rec.models.srm.ttt4rec import TTT4Rec
from lsc4rec.privacy import HOOK_SAFE_LOSSES, SECURE_MODE_UNAVAILABLE, PrivacySettings
from lsc4rec.training import TrainSettings, decay_lr_linearly

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------- the ledger (accountant history)

#: One composition step block: (noise multiplier, sample rate, number of steps), as Opacus' RDP history.
HistoryEntry = tuple[float, float, int]


def epsilon_of(history: Sequence[HistoryEntry], delta: float) -> float:
    """Cumulative ε at ``delta`` after ``history`` (RDP accountant); 0 for an empty history."""
    from opacus.accountants import RDPAccountant

    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(float(n), float(q), int(s)) for n, q, s in history]
    return float(accountant.get_epsilon(delta=delta))


def noise_for_target(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    total_steps: int,
    other_releases: Sequence[HistoryEntry] = (),
) -> float:
    """The least noise multiplier keeping ε <= ``target_epsilon`` after ``total_steps`` at ``sample_rate``,
    composed (RDP) with ``other_releases`` the device also makes (the fresh prior's)."""
    if other_releases:
        releases = tuple((float(n), float(q), int(s)) for n, q, s in other_releases)
        return _noise_for_composed_target(target_epsilon, delta, sample_rate, total_steps, releases)
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        # The search tries tiny noise levels whose ε peaks at the largest RDP order; only the answer matters.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        noise = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=total_steps,
            accountant="rdp",
            epsilon_tolerance=0.005,
        )
    return float(noise)


@functools.lru_cache(maxsize=64)
def _noise_for_composed_target(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    total_steps: int,
    other_releases: tuple[HistoryEntry, ...],
) -> float:
    """:func:`noise_for_target` with other releases: bisection on the noise multiplier (ε falls as it grows),
    to within 0.5% of the target. Cached: a node plans the same noise every round (a few seconds of RDP
    evaluations each time otherwise)."""
    others = epsilon_of(other_releases, delta)
    if others >= target_epsilon:
        raise ValueError(
            f"the releases besides DP-SGD alone spend epsilon {others:.3f} >= privacy.target_epsilon="
            f"{target_epsilon}: raise privacy.fresh_prior_noise_multiplier / "
            "privacy.fresh_prior_selection_noise_multiplier or the target"
        )

    def epsilon(noise: float) -> float:
        return epsilon_of([(noise, sample_rate, total_steps), *other_releases], delta)

    low, high = 0.0, 1.0
    while epsilon(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon} at delta {delta}")
    while high - low > 1e-4 and epsilon(high) < target_epsilon * (1 - 0.005):
        middle = (low + high) / 2
        if epsilon(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high


# ---------------------------------------------------------------------- the DP-SGD plan of one node


@dataclass(frozen=True)
class PrivatePlan:
    """How one node runs DP-SGD: Poisson rate, steps per epoch, noise, and the ε that results."""

    sample_rate: float
    steps_per_epoch: int
    expected_batch_size: float
    noise_multiplier: float
    delta: float


def plan_for(
    privacy: PrivacySettings,
    num_examples: int,
    batch_size: int,
    local_epochs: int,
    planned_rounds: int,
    num_devices: int,
) -> PrivatePlan:
    """The node's DP-SGD plan for ``num_examples`` sequences (the same every round, so ε is predictable)."""
    if num_examples < 1:
        raise ValueError("DP-SGD needs at least one training sequence on the node")
    steps = max(1, math.ceil(num_examples / batch_size))
    rate = 1.0 / steps
    delta = privacy.resolved_delta(num_devices)
    noise = privacy.noise_multiplier
    if noise == 0:
        assert privacy.target_epsilon is not None  # checked in PrivacySettings
        noise = noise_for_target(
            privacy.target_epsilon,
            delta,
            rate,
            steps * local_epochs * planned_rounds,
            privacy.planned_releases(),
        )
    return PrivatePlan(rate, steps, num_examples * rate, noise, delta)


def resolve_grad_sample_mode(privacy: PrivacySettings, model: SequentialRecommender, loss: str) -> str:
    """``rows``, ``hooks`` or ``functorch`` for this model and loss.

    ``auto`` picks ``rows`` wherever the loss reads the item table by id (``sampled_softmax``, ``bce``): exact
    and the fastest, as it never builds a per-example copy of the whole table; else ``functorch``.
    """
    reads_rows = loss in HOOK_SAFE_LOSSES
    if privacy.grad_sample_mode == "hooks":
        # TTT4Rec's fast weights are used functionally, outside any module the hooks watch; the text part
        # projects the whole catalogue at once where a batch reads many items (no batch dimension to hook).
        hookable = (
            not isinstance(model, TTT4Rec) and model.item_text is None and not _generates_classifier(model)
        )
        if not (reads_rows and hookable):
            raise ValueError(
                f"privacy.grad_sample_mode=hooks cannot train {type(model).__name__} with train.loss={loss}: "
                f"Opacus' per-layer hooks need a loss in {HOOK_SAFE_LOSSES} and no parameter used outside a "
                "module (TTT fast weights, SOLID's generated classifier, the text part's projection); use "
                "grad_sample_mode=functorch"
            )
        return "hooks"
    if privacy.grad_sample_mode == "rows":
        if not reads_rows:
            raise ValueError(
                f"privacy.grad_sample_mode=rows cannot train {type(model).__name__} with train.loss={loss}: "
                f"it needs a loss that reads item rows by id ({HOOK_SAFE_LOSSES}), not the whole table; "
                "use grad_sample_mode=functorch"
            )
        return "rows"
    if privacy.grad_sample_mode == "functorch":
        return "functorch"
    return "rows" if reads_rows else "functorch"


def _generates_classifier(model: SequentialRecommender) -> bool:
    """Whether ``model`` scores items through weights generated outside the item table (SOLID)."""
    from lsc4rec.models.solid.dual_model import SolidRecommender

    return isinstance(model, SolidRecommender)


# ---------------------------------------------------------------------- training


class _RowLoss(torch.nn.Module):
    """The wrapped SRM's per-sequence loss as a ``forward``, so that ``functional_call`` can swap weights."""

    def __init__(self, model: SequentialRecommender, loss: str) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-row losses ``[B]``: the next-item loss plus the model's per-row auxiliary term (SOLID's VQ)."""
        losses = per_sequence_loss(self.loss, self.model, inputs, targets, negatives)
        auxiliary = self.model.per_row_auxiliary_loss(inputs)
        return losses if auxiliary is None else losses + auxiliary


def check_per_row_terms(model: SequentialRecommender) -> None:
    """Refuse a model whose auxiliary training term DP-SGD would drop (no per-row form of it)."""
    kind = type(model)
    if (
        kind.auxiliary_loss is not SequentialRecommender.auxiliary_loss
        and kind.per_row_auxiliary_loss is SequentialRecommender.per_row_auxiliary_loss
    ):
        raise ValueError(
            f"DP-SGD clips each device's own loss: {kind.__name__} defines auxiliary_loss but not "
            "per_row_auxiliary_loss, so its auxiliary term would be dropped; implement per_row_auxiliary_loss"
        )


@dataclass(frozen=True)
class CloudListPass:
    """The pass over the cloud's lists (LSC4Rec's collaborative training) as DP-SGD runs it: one row per
    device (:func:`lsc4rec.client.collab.list_training.rerank_rows`), each position's target ranked against
    the cloud's list for it and ``random_negatives`` uniform items, for ``epochs`` passes."""

    inputs: torch.Tensor
    targets: torch.Tensor
    hard: torch.Tensor
    random_negatives: int
    epochs: int

    @property
    def rows(self) -> int:
        """Devices with a position to train on."""
        return int(self.inputs.size(0))


class _RerankRowLoss(torch.nn.Module):
    """The pass's per-row candidate-rerank loss (plus the model's per-row auxiliary term) as a ``forward``."""

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Per-row losses ``[B]``; ``negatives [B, L, m]``: each position's list, then uniform items."""
        losses = per_sequence_rerank_loss(self.model, inputs, targets, negatives)
        auxiliary = self.model.per_row_auxiliary_loss(inputs)
        return losses if auxiliary is None else losses + auxiliary


def _train_list_pass(run: _DPRun, lists: CloudListPass) -> _Trace:
    """DP-SGD over the cloud's lists with the round's plan (the same noise and sample rate, so the ledger
    composes alike); uniform negatives are drawn per batch and shared by its positions (data-independent).

    Always the row-gather engine, whatever engine the local epochs use: the rerank loss reads item rows by
    id (the target, the list, the uniform items), never the whole table.
    """
    trainable = run.trainable
    dataset = TensorDataset(lists.inputs, lists.targets, lists.hard)
    optimizer = run.settings.make_optimizer(p for p in trainable.parameters() if p.requires_grad)
    pass_run = replace(run, optimizer=optimizer, loader=DataLoader(dataset, generator=run.loader.generator))

    def negatives_of(
        inputs: torch.Tensor, targets: torch.Tensor, rest: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        (hard,) = rest
        uniform = torch.randint(
            1, trainable.num_items + 1, (lists.random_negatives,), generator=run.negatives
        ).to(hard.device)
        return torch.cat([hard, uniform.expand(*hard.shape[:2], -1)], dim=-1)

    return _train_rows(pass_run, lists.epochs, _RerankRowLoss(trainable), negatives_of)


def per_example_mode(model: SequentialRecommender, on: bool) -> None:
    """Switch ``model`` to static shapes for per-example gradients (SOLID generates at every position)."""
    if hasattr(model, "generate_everywhere"):
        model.generate_everywhere = on


def _per_sample_grads(
    wrapper: _RowLoss,
    params: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Gradient of every row's own loss w.r.t. every trainable parameter: ``{name: [B, *shape]}``."""
    buffers = dict(wrapper.named_buffers())

    def row_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, neg: torch.Tensor | None):
        # Under vmap a row's bce negatives are [L, n] (batched back to [1, L, n]); sampled-softmax ones [C].
        batched_neg = None if neg is None else neg.unsqueeze(0) if neg.dim() == 2 else neg
        out = functional_call(wrapper, ({**p, **buffers}), (x.unsqueeze(0), y.unsqueeze(0), batched_neg))
        return out.squeeze(0)

    # bce negatives are per position ([B, L, n]: one slice per row); sampled-softmax ones are shared ([C]).
    negative_dim = 0 if negatives is not None and negatives.dim() == 3 else None
    compute = vmap(grad(row_loss), in_dims=(None, 0, 0, negative_dim), randomness="different")
    return compute(params, inputs, targets, negatives)


def secure_generator() -> torch.Generator:
    """Opacus' secure-mode generator (``/dev/urandom`` through torchcsprng); a clear error without it."""
    try:
        import torchcsprng
    except ImportError:
        raise ValueError(SECURE_MODE_UNAVAILABLE) from None
    return torchcsprng.create_random_device_generator("/dev/urandom")


#: How a round reports its per-sample gradient engine (metric ``grad-sample-mode``).
GRAD_SAMPLE_MODE_CODES = {"hooks": 0.0, "functorch": 1.0, "rows": 2.0}


@dataclass
class _DPRun:
    """What one node's DP-SGD round trains with (both engines)."""

    trainable: SequentialRecommender
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    plan: PrivatePlan
    privacy: PrivacySettings
    settings: TrainSettings
    history: Sequence[HistoryEntry]
    noise: torch.Generator
    negatives: torch.Generator


@dataclass
class _Trace:
    """What a round's DP-SGD steps leave: per-batch losses, clipping counts and the extended ledger."""

    losses: list[float]
    clipped: int
    seen: int
    history: list[HistoryEntry]


def _count_clipped(trace: _Trace, norms: torch.Tensor, clipping_norm: float) -> None:
    trace.clipped += int((norms > clipping_norm).sum())
    trace.seen += int(norms.numel())


def physical_chunks(rows: int, physical: int) -> list[slice]:
    """The row ranges a Poisson batch of ``rows`` examples is computed in (``privacy.physical_batch_size``):
    chunks of ``physical`` rows, the last one shorter; one chunk when ``physical`` is 0 or covers the
    batch."""
    size = physical if 0 < physical < rows else rows
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def chunk_negatives(negatives: torch.Tensor | None, part: slice) -> torch.Tensor | None:
    """A chunk's negatives: per-position ones (``[B, L, n]``) sliced to its rows, shared ones (``[C]``)
    as they are."""
    if negatives is None or negatives.dim() != 3:
        return negatives
    return negatives[part]


def _train_opacus(run: _DPRun, local_epochs: int, mode: str) -> _Trace:
    """DP-SGD with Opacus' engine: per-sample gradients from its hooks, or from ``torch.func`` handed over."""
    from opacus import PrivacyEngine

    settings, trainable = run.settings, run.trainable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secure = run.privacy.secure_mode
        engine = PrivacyEngine(accountant="rdp", secure_mode=secure)
        engine.accountant.history = list(run.history)
        wrapped, dp_optimizer, dp_loader = engine.make_private(
            module=trainable,
            optimizer=run.optimizer,
            data_loader=run.loader,
            noise_multiplier=run.plan.noise_multiplier,
            max_grad_norm=run.privacy.clipping_norm,
            grad_sample_mode="hooks" if mode == "hooks" else "no_op",
            # In secure mode Opacus draws from its own cryptographic generator and refuses a given one.
            noise_generator=None if secure else run.noise,
        )
    trainable.train()
    row_loss = _RowLoss(trainable, settings.loss)
    # Names as the wrapper sees them ("model.<name>"), which is what functional_call swaps.
    named = [(n, p) for n, p in row_loss.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    trace = _Trace([], 0, 0, [])
    physical = run.privacy.physical_batch_size
    for _ in range(local_epochs):
        for inputs, targets in dp_loader:
            dp_optimizer.zero_grad(set_to_none=True)
            rows = inputs.size(0)
            if rows == 0:
                # An empty Poisson batch still takes a step: the noise is part of the mechanism.
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
            else:
                negatives = draw_negatives(
                    settings.loss, trainable.num_items, targets, settings.num_negatives, run.negatives
                )
                parts = physical_chunks(rows, physical)
                loss_sum = 0.0
                for index, part in enumerate(parts):
                    x, y, negative = inputs[part], targets[part], chunk_negatives(negatives, part)
                    if mode == "hooks":
                        per_row = per_sequence_loss(settings.loss, trainable, x, y, negative)
                        with warnings.catch_warnings():
                            # Opacus' hooks on the item embedding fire for an integer input (no input grad).
                            warnings.filterwarnings("ignore", message="Full backward hook is firing")
                            # Opacus scales a mean's per-sample gradients by this chunk's own size.
                            per_row.mean().backward()
                        loss_sum += float(per_row.detach().sum())
                    else:
                        values = {n: p.detach() for n, p in zip(names, params, strict=True)}
                        grads = _per_sample_grads(row_loss, values, x, y, negative)
                        for name, p in zip(names, params, strict=True):
                            p.grad_sample = grads[name]
                        with torch.no_grad():
                            loss_sum += float(row_loss(x, y, negative).sum())
                    size = x.size(0)
                    norms = torch.stack(
                        [p.grad_sample.reshape(size, -1).norm(dim=1) for p in params], dim=1
                    ).norm(dim=1)
                    _count_clipped(trace, norms, run.privacy.clipping_norm)
                    if index < len(parts) - 1:
                        # Opacus clips this chunk and adds it to the batch's sum without noise or a step
                        # (its gradient accumulation); the batch's last chunk steps, noised once.
                        dp_optimizer.signal_skip_step(do_skip=True)
                        dp_optimizer.step()
                        dp_optimizer.zero_grad(set_to_none=True)
                trace.losses.append(loss_sum / rows)
            dp_optimizer.step()
    if mode == "hooks":
        wrapped._close()  # remove Opacus' hooks from the module
    trace.history = [(float(n), float(q), int(s)) for n, q, s in engine.accountant.history]
    return trace


def _train_rows(
    run: _DPRun,
    epochs: int,
    row_loss: torch.nn.Module | None = None,
    negatives_of: Callable[[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor]
    | None = None,
) -> _Trace:
    """DP-SGD whose per-sample gradients touch only the item rows each example reads (:mod:`dp_rows`).

    The mechanism is Opacus' own: Poisson sampling at the plan's rate (its loader), its noise function (std =
    noise multiplier x clipping norm on every coordinate of every trained parameter, the sum divided by its
    expected batch size) and its RDP accountant, stepped once per optimizer step. ``row_loss`` (default: the
    next-item loss of ``train.loss``) gives per-row losses of ``(inputs, targets, negatives)``;
    ``negatives_of(inputs, targets, rest)`` draws a batch's negatives from the loader's other columns
    (default: :func:`draw_negatives`).
    """
    from opacus.accountants import RDPAccountant
    from opacus.data_loader import DPDataLoader
    from opacus.optimizers.optimizer import _generate_noise

    from lsc4rec.client.dp_rows import RowGatherStep

    settings, trainable, plan = run.settings, run.trainable, run.plan
    dataset = run.loader.dataset
    dp_loader = DPDataLoader(dataset, sample_rate=plan.sample_rate, generator=run.loader.generator)
    # Opacus' DPOptimizer divides by int(len(dataset) x sample rate); so does this engine.
    expected_batch = max(int(len(dataset) * plan.sample_rate), 1)
    accountant = RDPAccountant()
    accountant.history = list(run.history)
    trainable.train()
    row_loss = row_loss or _RowLoss(trainable, settings.loss)
    named = {n: p for n, p in row_loss.named_parameters() if p.requires_grad}
    step = RowGatherStep(row_loss, list(named))
    std = plan.noise_multiplier * run.privacy.clipping_norm
    trace = _Trace([], 0, 0, [])
    for _ in range(epochs):
        for inputs, targets, *rest in dp_loader:
            run.optimizer.zero_grad(set_to_none=True)
            if inputs.size(0) == 0:
                # An empty Poisson batch still takes a step: the noise is part of the mechanism.
                sums = {n: torch.zeros_like(p) for n, p in named.items()}
            else:
                if negatives_of is None:
                    negatives = draw_negatives(
                        settings.loss, trainable.num_items, targets, settings.num_negatives, run.negatives
                    )
                else:
                    negatives = negatives_of(inputs, targets, tuple(rest))
                sums = {n: torch.zeros_like(p) for n, p in named.items()}
                loss_sum = 0.0
                # Each chunk's examples clipped one by one and summed: the batch's sum whatever the chunks.
                for part in physical_chunks(inputs.size(0), run.privacy.physical_batch_size):
                    x, y, negative = inputs[part], targets[part], chunk_negatives(negatives, part)
                    clipped = step.clipped_sum(x, y, negative, run.privacy.clipping_norm)
                    for name, chunk_sum in clipped.sums.items():
                        sums[name] += chunk_sum
                    _count_clipped(trace, clipped.norms, run.privacy.clipping_norm)
                    with torch.no_grad():
                        loss_sum += float(row_loss(x, y, negative).sum())
                trace.losses.append(loss_sum / inputs.size(0))
            for name, p in named.items():
                noisy = sums[name] + _generate_noise(
                    std=std, reference=p, generator=run.noise, secure_mode=run.privacy.secure_mode
                )
                p.grad = noisy / expected_batch
            run.optimizer.step()
            accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    trace.history = [(float(n), float(q), int(s)) for n, q, s in accountant.history]
    return trace


@dataclass
class PrivateRoundResult:
    """One node's DP-SGD round: metrics for the reply and the updated ledger."""

    metrics: dict[str, float]
    history: list[HistoryEntry]
    trained: bool
    #: What this round released, ``(noise multiplier, sample rate, steps)``; None when it did not train.
    released: HistoryEntry | None = None


def _dp_run(
    model: SequentialRecommender,
    batches: TrainBatches,
    settings: TrainSettings,
    privacy: PrivacySettings,
    plan: PrivatePlan,
    history: list[HistoryEntry],
    mode: str,
    seed: int,
    batch_size: int,
) -> _DPRun:
    """What this round's DP-SGD trains with: the (Opacus-fixed) model, its optimizer, the Poisson loader
    and the noise and negative-sampling generators; seeds torch with ``seed``."""
    from opacus.validators import ModuleValidator

    # Seeded noise makes experiments replay exactly; an adversary who knows the seed could subtract the noise,
    # so a deployment sets privacy.seeded_noise=false (sampling and noise seeds from the OS).
    rng_seed = seed if privacy.seeded_noise else int.from_bytes(os.urandom(8), "little") & (2**63 - 1)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        # Opacus warns about secure_mode and its own RNG; seeds here are for reproducible experiments.
        warnings.simplefilter("ignore")
        # DPGRU for nn.GRU: Opacus' hooks need it, and torch.func cannot batch nn.GRU's fused kernel.
        trainable = ModuleValidator.fix(model) if mode in ("hooks", "rows") else model
    if privacy.freeze_item_embeddings:
        # The item table is most of an SRM's parameters, and DP noise lands on every one of its rows each
        # step while a user's gradient touches a few; keeping it fixed (e.g. as warm-started on the cloud)
        # spends the noise on the sequence encoder only.
        trainable.item_embedding.weight.requires_grad_(False)
    optimizer = settings.make_optimizer(p for p in trainable.parameters() if p.requires_grad)
    if privacy.secure_mode:
        # Poisson sampling and noise from the OS's cryptographic RNG (Opacus' secure_mode).
        sampling = noise = secure_generator()
    else:
        sampling = torch.Generator().manual_seed(rng_seed)
        noise = torch.Generator().manual_seed(rng_seed + 1)
    loader = DataLoader(
        TensorDataset(batches.inputs, batches.targets), batch_size=batch_size, generator=sampling
    )
    return _DPRun(
        trainable=trainable,
        optimizer=optimizer,
        loader=loader,
        plan=plan,
        privacy=privacy,
        settings=settings,
        history=history,
        noise=noise,
        negatives=torch.Generator().manual_seed(seed),
    )


def train_on_shard_private(
    model: SequentialRecommender,
    train_sequences: Sequence[Sequence[int]],
    settings: TrainSettings,
    privacy: PrivacySettings,
    max_len: int,
    local_epochs: int,
    planned_rounds: int,
    num_devices: int,
    seed: int,
    history: Sequence[HistoryEntry] = (),
    label: str = "node",
    optimizer_state: Mapping[str, torch.Tensor] | None = None,
    keep_state: Callable[[dict[str, torch.Tensor]], None] | None = None,
    cloud_lists: CloudListPass | None = None,
    decay_epochs: int = 0,
) -> PrivateRoundResult:
    """Train ``model`` in place with DP-SGD for ``local_epochs`` over ``train_sequences`` (one per device).

    ``history`` is the node's ledger from earlier rounds; the result holds it extended by this round. When
    this round would take ε past the budget, nothing is trained and ``trained`` is False.
    ``optimizer_state`` / ``keep_state`` carry the optimizer's moments across rounds
    (``federated.keep_optimizer_state``): computed from noised gradients only, they are post-processing of
    the mechanism and cost no ε. ``cloud_lists``: the pass over the cloud's lists runs first, as DP-SGD with
    the same plan (each device one row, sampled at the same rate, the same noise), its steps in the ledger;
    the noise for a ``target_epsilon`` covers both. Metrics:
    ``epsilon`` (cumulative, at ``delta``), ``delta``, ``noise-multiplier``, ``sample-rate``,
    ``clipped-fraction`` (share of per-sample gradients the clipping norm cut), ``num-examples``,
    ``train_loss``, ``grad-sample-mode`` (0 hooks, 1 functorch, 2 rows); with the pass, its ``rerank-*``.
    The last ``decay_epochs`` local epochs take the learning rate linearly to 0 (a schedule of the steps,
    which the mechanism's noise and accounting do not depend on).
    """
    batches = TrainBatches(train_sequences, max_len, settings.batch_size, seed=seed)
    if batches.num_examples == 0:
        raise ValueError(f"{label}: no device has a sequence with 2+ training items")
    batch_size = privacy.batch_size or settings.batch_size
    list_epochs = cloud_lists.epochs if cloud_lists is not None and cloud_lists.rows > 0 else 0
    epochs = local_epochs + list_epochs
    plan = plan_for(privacy, batches.num_examples, batch_size, epochs, planned_rounds, num_devices)
    history = list(history)
    this_round = (plan.noise_multiplier, plan.sample_rate, plan.steps_per_epoch * epochs)
    spent = epsilon_of(history, plan.delta)
    after = epsilon_of([*history, this_round], plan.delta)
    base_metrics = {
        "delta": plan.delta,
        "noise-multiplier": plan.noise_multiplier,
        "sample-rate": plan.sample_rate,
        DEVICES: float(batches.num_examples),
    }
    budget = privacy.budget
    if budget is not None and after > budget * (1 + 1e-9):
        logger.warning(
            "%s: privacy budget spent (epsilon %.3f; one more round would reach %.3f > %.3f): not training",
            label,
            spent,
            after,
            budget,
        )
        metrics = {**base_metrics, EPSILON: spent, PRIVACY_EXHAUSTED: 1.0, NUM_EXAMPLES: 0.0}
        return PrivateRoundResult(metrics, history, trained=False)

    mode = resolve_grad_sample_mode(privacy, model, settings.loss)
    check_per_row_terms(model)
    run = _dp_run(model, batches, settings, privacy, plan, history, mode, seed, batch_size)
    if optimizer_state:
        load_optimizer_arrays(run.optimizer, optimizer_state)
    if decay_epochs:
        steps = plan.steps_per_epoch
        decay_lr_linearly(run.optimizer, (local_epochs - decay_epochs) * steps, decay_epochs * steps)
    trainable = run.trainable
    per_example_mode(trainable, mode != "hooks")
    list_metrics: dict[str, float] = {}
    try:
        if list_epochs:
            assert cloud_lists is not None
            start = time.perf_counter()
            listed = _train_list_pass(run, cloud_lists)
            run.history = listed.history
            list_metrics = {
                "rerank-loss": sum(listed.losses) / max(len(listed.losses), 1),
                "rerank-positions": float((cloud_lists.targets > 0).sum()),
                "rerank-seconds": time.perf_counter() - start,
                "rerank-clipped-fraction": listed.clipped / max(listed.seen, 1),
            }
        trace = _train_rows(run, local_epochs) if mode == "rows" else _train_opacus(run, local_epochs, mode)
    finally:
        per_example_mode(trainable, False)
    trainable.item_embedding.weight.requires_grad_(True)
    if keep_state is not None:
        keep_state(optimizer_state_arrays(run.optimizer))
    if trainable is not model:
        # DPGRU keeps the nn.GRU parameter names as aliases; copy every original key back.
        fixed_state = trainable.state_dict()
        model.load_state_dict({key: fixed_state[key] for key in model.state_dict()})
    new_history = trace.history
    epsilon = epsilon_of(new_history, plan.delta)
    metrics = {
        **base_metrics,
        EPSILON: epsilon,
        PRIVACY_EXHAUSTED: 0.0,
        NUM_EXAMPLES: float(batches.num_targets),
        TRAIN_LOSS: sum(trace.losses) / max(len(trace.losses), 1),
        "clipped-fraction": trace.clipped / max(trace.seen, 1),
        "grad-sample-mode": GRAD_SAMPLE_MODE_CODES[mode],
        **list_metrics,
    }
    return PrivateRoundResult(metrics, new_history, trained=True, released=this_round)
