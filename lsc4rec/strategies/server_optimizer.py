"""Server-side optimizers for federated rounds (FedOpt, Reddi et al. 2021; FedAvgM, Hsu et al. 2019).

The round's aggregate minus the current global weights is a pseudo-gradient Δ (a descent direction: it points
where the devices moved). The server applies it with its own optimizer instead of simply adopting the
aggregate:

* ``none``: ``w + Δ``, i.e. plain adoption of the aggregate (FedAvg / FedMedian / trimmed mean as they are).
* ``sgd``: ``w + lr·Δ`` (a server learning rate; lr = 1 is ``none``).
* ``momentum`` (FedAvgM): ``m = β·m + Δ``, ``w + lr·m``.
* ``adam`` (FedAdam): ``m = β1·m + (1-β1)·Δ``, ``v = β2·v + (1-β2)·Δ²``, ``w + lr·m / (√v + τ)``; as in the
  paper there is no bias correction and τ (``eps``) controls adaptivity.

Integer arrays (counters) are never stepped: they take the aggregate as is. The state is plain numpy, so the
server checkpoint can pickle it and a resumed run continues with the same moments.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SERVER_OPTIMIZERS = ("none", "sgd", "momentum", "adam")

__all__ = ["SERVER_OPTIMIZERS", "ServerOptimizer"]


class ServerOptimizer:
    """Applies each round's pseudo-gradient (aggregate − global) to the global weights."""

    def __init__(
        self,
        name: str = "none",
        lr: float = 1.0,
        momentum: float = 0.9,
        beta2: float = 0.99,
        eps: float = 1e-3,
    ) -> None:
        """Configure the optimizer ``name`` (one of ``SERVER_OPTIMIZERS``) and its hyperparameters."""
        if name not in SERVER_OPTIMIZERS:
            raise ValueError(f"strategy.server_optimizer.name={name!r} is not one of {SERVER_OPTIMIZERS}")
        if not lr > 0:
            raise ValueError(f"strategy.server_optimizer.lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"strategy.server_optimizer.momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"strategy.server_optimizer.beta2 must be in [0, 1), got {beta2}")
        if not eps > 0:
            raise ValueError(f"strategy.server_optimizer.eps must be > 0, got {eps}")
        self.name = name
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.first_moment: dict[str, np.ndarray] = {}
        self.second_moment: dict[str, np.ndarray] = {}

    def step(
        self, current: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The new global weights from the ``current`` ones and the round's ``aggregate`` (same keys)."""
        if set(current) != set(aggregate):
            raise ValueError(
                f"aggregate keys {sorted(aggregate)[:3]}... differ from the global keys "
                f"{sorted(current)[:3]}..."
            )
        if self.name == "none":
            return {key: np.asarray(aggregate[key]) for key in current}
        out: dict[str, np.ndarray] = {}
        for key, weights in current.items():
            weights = np.asarray(weights)
            target = np.asarray(aggregate[key])
            if not np.issubdtype(weights.dtype, np.floating):
                out[key] = target
                continue
            delta = target.astype(np.float64) - weights.astype(np.float64)
            if self.name == "sgd":
                update = delta
            elif self.name == "momentum":
                buffer = self.first_moment.get(key, np.zeros_like(delta))
                update = self.first_moment[key] = self.momentum * buffer + delta
            else:
                m = self.first_moment.get(key, np.zeros_like(delta))
                v = self.second_moment.get(key, np.zeros_like(delta))
                m = self.first_moment[key] = self.momentum * m + (1.0 - self.momentum) * delta
                v = self.second_moment[key] = self.beta2 * v + (1.0 - self.beta2) * delta**2
                update = m / (np.sqrt(v) + self.eps)
            out[key] = (weights.astype(np.float64) + self.lr * update).astype(weights.dtype)
        return out

    def state_dict(self) -> dict:
        """The optimizer's moments (numpy arrays), for the server checkpoint."""
        return {"first_moment": dict(self.first_moment), "second_moment": dict(self.second_moment)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` output."""
        self.first_moment = {k: np.asarray(v) for k, v in state.get("first_moment", {}).items()}
        self.second_moment = {k: np.asarray(v) for k, v in state.get("second_moment", {}).items()}
