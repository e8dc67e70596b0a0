"""Central DP on the private part only: the public item table is trained by no node and gets no noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from test_privacy import NUM_ITEMS, NodeGrid, sequences, settings

from lsc4rec.client.local_training import train_on_shard
from lsc4rec.client.shard import DeviceShard
from lsc4rec.models.srm import build_srm
from lsc4rec.strategies import SRMStrategy
from lsc4rec.strategies.central_dp import CentralDP, central_epsilon


@pytest.mark.usefixtures("task_identity")
def test_public_parameters_leave_the_round_unchanged_while_the_rest_is_noised() -> None:
    """Ten of 40 nodes train; their updates leave the public table alone. The aggregate's table is the
    global one bit for bit (no noise), the private weights carry noise of std σC/10."""
    sigma, clip, size = 2.0, 0.5, 40_000
    weights = ArrayRecord(
        {
            "table": Array(np.linspace(-1, 1, size, dtype=np.float32)),
            "encoder": Array(np.linspace(1, -1, size, dtype=np.float32)),
        }
    )
    dp = CentralDP(
        SRMStrategy(uniform_weights=True, seed=0, fraction_train=0.25), sigma, clip, num_sampled_nodes=10,
        delta=1e-3, public_keys=("table",),
    )  # fmt: skip
    messages = list(dp.configure_train(1, weights, ConfigRecord(), NodeGrid(40)))
    assert len(messages) == 10
    generator = np.random.default_rng(1)
    updates = [generator.normal(0, 1e-4, size).astype(np.float32) for _ in messages]
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(
                        {"table": weights["table"], "encoder": Array(weights["encoder"].numpy() + update)}
                    ),
                    "metrics": MetricRecord({"num-examples": 5.0}),
                }
            ),
            reply_to=m,
        )
        for m, update in zip(messages, updates, strict=True)
    ]
    aggregate, metrics = dp.aggregate_train(1, replies)
    assert np.array_equal(aggregate["table"].numpy(), weights["table"].numpy())
    noise = aggregate["encoder"].numpy() - weights["encoder"].numpy() - np.mean(updates, axis=0)
    assert float(noise.std()) == pytest.approx(sigma * clip / 10, rel=0.03)
    assert metrics["epsilon"] == pytest.approx(central_epsilon(sigma, 1, 1e-3, 10))
    with pytest.raises(ValueError, match=r"public parameters \['absent'\]"):
        CentralDP(
            SRMStrategy(uniform_weights=True), 1.0, 1.0, 10, 1e-3, public_keys=("absent",)
        ).configure_train(2, weights, ConfigRecord(), NodeGrid(40))


def test_a_node_with_the_frozen_item_table_sends_it_back_unchanged() -> None:
    torch.manual_seed(0)
    model = build_srm("sasrec", NUM_ITEMS, hidden_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = tuple(tuple(seq) for seq in sequences(24, seed=3))
    shard = DeviceShard(0, 1, tuple(range(24)), train, ((),) * 24, (1,) * 24, NUM_ITEMS)
    train_on_shard(model, shard, settings(), 10, 1, 0.0, seed=1, frozen_item_table=True)
    assert torch.equal(model.item_embedding.weight, before["item_embedding.weight"])
    assert model.item_embedding.weight.requires_grad
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(before) - {"item_embedding.weight"}
    # Without the flag the same training moves the table.
    train_on_shard(model, shard, settings(), 10, 1, 0.0, seed=1)
    assert not torch.equal(model.item_embedding.weight, before["item_embedding.weight"])


def test_the_frozen_table_is_refused_where_a_pass_would_train_it() -> None:
    from lsc4rec.settings import SettingsError, federated_settings_from_overrides

    with pytest.raises(SettingsError, match=r"freeze_item_embeddings=true with collab\.srm_training=collab"):
        federated_settings_from_overrides(["privacy.freeze_item_embeddings=true"])  # the whole system
    run = federated_settings_from_overrides(["system=base", "privacy.freeze_item_embeddings=true"])
    assert run.privacy.freeze_item_embeddings
    # Under local DP the pass is part of the DP-SGD round, which keeps the table frozen: allowed.
    local = ["privacy.freeze_item_embeddings=true", "privacy.mode=local", "privacy.noise_multiplier=1"]
    assert federated_settings_from_overrides(local).collab.srm_training == "collaborative"
