"""A device node's local update: train the received global SRM on its devices' sequences."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

import torch

from lsc4rec.client.shard import DeviceShard
from lsc4rec.data import TrainBatches
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.training import TrainSettings, model_device, train_one_epoch


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


def train_on_shard(
    model: SequentialRecommender,
    shard: DeviceShard,
    settings: TrainSettings,
    max_len: int,
    local_epochs: int,
    proximal_mu: float,
    seed: int,
) -> dict[str, float]:
    """Run ``local_epochs`` over the shard's sequences; return the node's training metrics.

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
    optimizer = settings.make_optimizer(model.parameters())
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
    # The reply carries the weights from wherever the model came from (the ArrayRecord codec reads CPU).
    model.to(home)
    return {
        "num-examples": float(batches.num_targets),
        "train_loss": float(losses[-1]),
        "devices": float(shard.num_devices),
    }
