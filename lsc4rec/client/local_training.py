"""A device node's local update: train the received global SRM on its devices' sequences."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import replace

import torch
from flwr.app import Array, ArrayRecord, Context

from lsc4rec.client.shard import DeviceShard
from lsc4rec.data import TrainBatches
from lsc4rec.messages import NUM_EXAMPLES, TRAIN_LOSS
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.settings import FederatedSettings
from lsc4rec.training import TrainSettings, decay_lr_linearly, model_device, train_one_epoch


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's hash() of str is salted per process, so not usable)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def proximal_term(model: SequentialRecommender, mu: float) -> Callable[[], torch.Tensor] | None:
    """FedProx: a function giving (mu / 2) * ||w - w_global||^2, anchored at the model's current weights."""
    if mu <= 0:
        return None
    pairs = [(p, p.detach().clone()) for p in model.parameters()]

    def term() -> torch.Tensor:
        return 0.5 * mu * sum(((p - anchor) ** 2).sum() for p, anchor in pairs)

    return term


#: The per-parameter optimizer buffers (Adam moments, SGD momentum) a node may carry between rounds.
_OPTIMIZER_BUFFERS = ("step", "exp_avg", "exp_avg_sq", "momentum_buffer")


def optimizer_state_arrays(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter buffers as flat ``"<param index>.<buffer>"`` CPU tensors."""
    flat: dict[str, torch.Tensor] = {}
    for index, buffers in optimizer.state_dict()["state"].items():
        for name in _OPTIMIZER_BUFFERS:
            if name in buffers:
                value = torch.as_tensor(buffers[name])
                flat[f"{index}.{name}"] = value.detach().to("cpu", copy=True).reshape(value.shape)
    return flat


def load_optimizer_arrays(optimizer: torch.optim.Optimizer, flat: Mapping[str, torch.Tensor]) -> None:
    """Restore buffers saved by :func:`optimizer_state_arrays`; the optimizer keeps its own hyperparameters.

    Raises ValueError naming the buffer when the saved state does not fit the model's parameters.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index_text, _, name = key.partition(".")
        if not index_text.isdigit() or name not in _OPTIMIZER_BUFFERS or int(index_text) >= len(params):
            raise ValueError(
                f"saved optimizer state has an unknown entry {key!r} for {len(params)} parameters"
            )
        param = params[int(index_text)]
        if name != "step" and tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"saved optimizer state {key!r} has shape {tuple(value.shape)} but parameter "
                f"{index_text} has {tuple(param.shape)}"
            )
        state.setdefault(int(index_text), {})[name] = torch.as_tensor(value)
    current = optimizer.state_dict()
    # Hyperparameters (this round's lr) come from the fresh optimizer, only the moments from the saved state.
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


#: context.state key of the node's Adam moments (``federated.keep_optimizer_state``).
OPTIMIZER_STATE_KEY = "optimizer"


def saved_optimizer_state(context: Context) -> dict[str, torch.Tensor] | None:
    """The optimizer moments an earlier round kept in the node's state (None before the first)."""
    saved = context.state.array_records.get(OPTIMIZER_STATE_KEY)
    return {k: torch.from_numpy(a.numpy()) for k, a in saved.items()} if saved else None


def optimizer_state_keeper(context: Context) -> Callable[[dict[str, torch.Tensor]], None]:
    """A ``keep_state`` callback storing the moments in the node's state for the next round."""

    def keep_state(flat: dict[str, torch.Tensor]) -> None:
        context.state[OPTIMIZER_STATE_KEY] = ArrayRecord({k: Array(v.numpy()) for k, v in flat.items()})

    return keep_state


def final_decay_epochs(federated: FederatedSettings, server_round: int) -> int:
    """How many of this round's last local epochs decay the learning rate: the last round's
    ``federated.final_decay_epochs``, 0 in every other round."""
    return federated.final_decay_epochs if server_round == federated.rounds else 0


def train_on_shard(
    model: SequentialRecommender,
    shard: DeviceShard,
    settings: TrainSettings,
    max_len: int,
    local_epochs: int,
    proximal_mu: float,
    seed: int,
    optimizer_state: Mapping[str, torch.Tensor] | None = None,
    keep_state: Callable[[dict[str, torch.Tensor]], None] | None = None,
    frozen_item_table: bool = False,
    decay_epochs: int = 0,
) -> dict[str, float]:
    """Run ``local_epochs`` over the shard's sequences; return the node's training metrics.

    ``optimizer_state`` (from an earlier round's ``keep_state``) restores the node's Adam moments instead of
    starting them from zero; ``keep_state`` receives the moments after training. ``frozen_item_table``
    (``privacy.freeze_item_embeddings``) keeps the item table as received: it gets no gradient, so the update
    leaves it bit-identical. The last ``decay_epochs`` epochs take the learning rate linearly to 0
    (``federated.final_decay_epochs`` in the last round).

    Trains on ``settings.device``. ``num-examples`` is the number of next-item targets trained on (the FedAvg
    weight). Every source of randomness (batch order, dropout, sampled negatives) derives from ``seed``, so a
    round replays exactly.
    """
    torch.manual_seed(seed)
    batches = TrainBatches(shard.train_sequences, max_len, settings.batch_size, seed=seed)
    if batches.num_examples == 0:
        raise ValueError(f"partition {shard.partition_id}: no device has a sequence with 2+ training items")
    home = model_device(model)
    model.to(settings.resolve_device())
    table = model.item_embedding.weight
    table.requires_grad_(not frozen_item_table)
    optimizer = settings.make_optimizer(p for p in model.parameters() if p.requires_grad)
    if optimizer_state:
        load_optimizer_arrays(optimizer, optimizer_state)
    if decay_epochs:
        steps = len(batches)
        decay_lr_linearly(optimizer, (local_epochs - decay_epochs) * steps, decay_epochs * steps)
    generator = torch.Generator().manual_seed(seed)
    regularizer = proximal_term(model, proximal_mu)
    quiet = replace(settings, progress=False)
    losses = []
    for epoch in range(local_epochs):
        batches.set_epoch(epoch)
        losses.append(
            train_one_epoch(
                model, batches, optimizer, quiet, generator, f"partition {shard.partition_id}", regularizer
            )
        )
    table.requires_grad_(True)
    if keep_state is not None:
        keep_state(optimizer_state_arrays(optimizer))
    # The reply carries the weights from wherever the model came from (the ArrayRecord codec reads CPU).
    model.to(home)
    return {
        NUM_EXAMPLES: float(batches.num_targets),
        TRAIN_LOSS: float(losses[-1]),
        "devices": float(shard.num_devices),
    }
