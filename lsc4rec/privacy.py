"""Privacy settings shared by the devices (local DP-SGD) and the server (central DP): ``conf/privacy/``."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

__all__ = [
    "GRAD_SAMPLE_MODES",
    "HOOK_SAFE_LOSSES",
    "PRIVACY_MODES",
    "SECURE_MODE_UNAVAILABLE",
    "PrivacySettings",
]

PRIVACY_MODES = ("none", "local", "central")
GRAD_SAMPLE_MODES = ("auto", "rows", "hooks", "functorch")
#: Losses whose every parameter use Opacus' per-layer hooks see (see ``models/srm/base.py``).
HOOK_SAFE_LOSSES = ("sampled_softmax", "bce")
#: Why ``privacy.secure_mode`` is refused without torchcsprng (at start-up, and on a node before it trains).
SECURE_MODE_UNAVAILABLE = (
    "privacy.secure_mode=true needs the torchcsprng package (Opacus' cryptographic RNG), which is not "
    "installed: torchcsprng has no build for torch 2.x or Python >= 3.10 (its last release, 0.2.1 of March "
    "2021, targets torch 1.8 and Python 3.6-3.9, and PyPI holds no source archive). Set "
    "privacy.secure_mode=false (with privacy.seeded_noise=false in a deployment), or install a torchcsprng "
    "built for this torch"
)


@dataclass(frozen=True)
class PrivacySettings:
    """What ``conf/privacy/*.yaml`` configures (see there for each key)."""

    mode: str = "none"
    noise_multiplier: float = 0.0
    target_epsilon: float | None = None
    max_epsilon: float | None = None
    delta: float | None = None
    clipping_norm: float = 1.0
    batch_size: int = 0
    physical_batch_size: int = 0
    grad_sample_mode: str = "auto"
    central_clipping: str = "server"
    adaptive_clipping: bool = False
    adaptive_quantile: float = 0.5
    adaptive_clip_lr: float = 0.2
    adaptive_count_stddev: float | None = None
    seeded_noise: bool = True
    freeze_item_embeddings: bool = False
    ledger_dir: str | None = None
    secure_mode: bool = False
    fresh_prior: bool = False
    fresh_prior_recent: int = 3
    fresh_prior_noise_multiplier: float = 4.0
    fresh_prior_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    fresh_prior_selection_noise_multiplier: float = 4.0

    def __post_init__(self) -> None:
        if self.mode not in PRIVACY_MODES:
            raise ValueError(f"privacy.mode must be one of {PRIVACY_MODES}, got {self.mode!r}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(
                f"privacy.grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {self.grad_sample_mode!r}"
            )
        if self.central_clipping not in ("server", "client"):
            raise ValueError(
                f"privacy.central_clipping must be server or client, got {self.central_clipping!r}"
            )
        if not self.clipping_norm > 0:
            raise ValueError(f"privacy.clipping_norm must be > 0, got {self.clipping_norm}")
        if self.adaptive_clipping and self.mode != "central":
            raise ValueError(
                f"privacy.adaptive_clipping=true adapts central DP's per-node clipping norm; privacy.mode="
                f"{self.mode} has none (local DP-SGD clips each device's gradient at privacy.clipping_norm)"
            )
        if not 0.0 <= self.adaptive_quantile <= 1.0:
            raise ValueError(f"privacy.adaptive_quantile must be in [0, 1], got {self.adaptive_quantile}")
        if not self.adaptive_clip_lr > 0:
            raise ValueError(f"privacy.adaptive_clip_lr must be > 0, got {self.adaptive_clip_lr}")
        if self.adaptive_count_stddev is not None and not self.adaptive_count_stddev > 0:
            raise ValueError(
                f"privacy.adaptive_count_stddev must be > 0 (or null), got {self.adaptive_count_stddev}"
            )
        if (
            self.adaptive_clipping
            and self.adaptive_count_stddev is not None
            and self.noise_multiplier >= 2 * self.adaptive_count_stddev
        ):
            raise ValueError(
                f"privacy.adaptive_count_stddev={self.adaptive_count_stddev} must exceed half of "
                f"privacy.noise_multiplier={self.noise_multiplier} (the update's noise absorbs the count's "
                "release); set it higher or null"
            )
        if self.noise_multiplier < 0:
            raise ValueError(f"privacy.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        for name in ("target_epsilon", "max_epsilon"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"privacy.{name} must be > 0 (or null), got {value}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"privacy.delta must be in (0, 1) (or null = 1/devices), got {self.delta}")
        if self.batch_size < 0:
            raise ValueError(f"privacy.batch_size must be >= 0 (0 = train.batch_size), got {self.batch_size}")
        if self.physical_batch_size < 0:
            raise ValueError(
                "privacy.physical_batch_size must be >= 0 (0 = each Poisson batch at once), "
                f"got {self.physical_batch_size}"
            )
        if self.ledger_dir is not None and self.mode != "local":
            raise ValueError(
                "privacy.ledger_dir is where local DP-SGD nodes keep their ledgers; "
                f"privacy.mode={self.mode} keeps none"
            )
        if self.secure_mode and self.mode != "local":
            raise ValueError(
                f"privacy.secure_mode=true applies to local DP-SGD only, not privacy.mode={self.mode} "
                "(central DP's noise is drawn by Flower's strategy)"
            )
        if self.secure_mode and importlib.util.find_spec("torchcsprng") is None:
            raise ValueError(SECURE_MODE_UNAVAILABLE)
        if self.secure_mode and self.seeded_noise:
            raise ValueError(
                "privacy.secure_mode=true draws from the OS's cryptographic RNG, which cannot be seeded: "
                "set privacy.seeded_noise=false"
            )
        self._check_fresh_prior()
        if self.mode != "none" and self.target_epsilon is None and self.noise_multiplier == 0:
            raise ValueError(
                f"privacy.mode={self.mode} needs privacy.noise_multiplier > 0 or privacy.target_epsilon"
            )

    def _check_fresh_prior(self) -> None:
        """The fresh-popularity prior's keys (``privacy.fresh_prior*``)."""
        if not self.fresh_prior:
            return
        if self.mode == "central":
            raise ValueError(
                "privacy.fresh_prior=true releases user-level noised counts from each node (local DP's "
                "unit); central DP accounts whole nodes and cannot account them: use privacy.mode=local "
                "or none"
            )
        if self.fresh_prior_recent < 1:
            raise ValueError(f"privacy.fresh_prior_recent must be >= 1, got {self.fresh_prior_recent}")
        if not self.fresh_prior_weights or any(w < 0 for w in self.fresh_prior_weights):
            raise ValueError(
                "privacy.fresh_prior_weights must be a non-empty list of weights >= 0, got "
                f"{list(self.fresh_prior_weights)}"
            )
        for name in ("fresh_prior_noise_multiplier", "fresh_prior_selection_noise_multiplier"):
            value = getattr(self, name)
            if value < 0 or (self.mode == "local" and value == 0):
                raise ValueError(
                    f"privacy.{name} must be > 0 with privacy.mode=local (>= 0 otherwise), got {value}"
                )

    def planned_releases(self) -> list[tuple[float, float, int]]:
        """What each device releases besides DP-SGD, as RDP history entries (noise multiplier, rate, steps):
        with local DP and the fresh prior, two count vectors and one vector of per-weight gains, each a
        Gaussian mechanism over all of the node's devices (rate 1); nothing otherwise. The DP-SGD noise for a
        ``target_epsilon`` is planned so that the composition ends at the target."""
        if not (self.fresh_prior and self.mode == "local"):
            return []
        return [
            (self.fresh_prior_noise_multiplier, 1.0, 2),
            (self.fresh_prior_selection_noise_multiplier, 1.0, 1),
        ]

    def resolved_delta(self, num_devices: int) -> float:
        """δ: the configured value, else 1 / the number of devices in the whole population."""
        if self.delta is not None:
            return self.delta
        if num_devices < 2:
            raise ValueError(f"privacy.delta=null means 1/devices, but there are {num_devices} devices")
        return 1.0 / num_devices

    @property
    def budget(self) -> float | None:
        """The ε a device may not exceed: ``max_epsilon``, else ``target_epsilon``, else none."""
        return self.max_epsilon if self.max_epsilon is not None else self.target_epsilon
