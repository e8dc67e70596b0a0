"""Typed settings: the composed Hydra config turned into dataclasses once, at an entry point.

``conf/`` describes every key (one YAML per group, a comment per key); this module gives the groups a type.
:func:`typed_section` builds a settings dataclass from a config section and refuses, naming the dotted key, a
key the dataclass does not know, a key it needs but the section lacks, and a value of the wrong type. Entry
points build their settings once (:func:`federated_settings` for the ServerApp, the ClientApp and the
launcher; :func:`typed_run` with :class:`CentralizedSettings`, :class:`RequestCurveSettings`,
:class:`SolidStudySettings` or :class:`MergeNetStudySettings` for the experiments); code below them takes the
settings it needs instead of the whole config.

The groups that configure a model or a part beside it are typed next to their code: ``model`` by one config
class per model (:data:`lsc4rec.training.MODEL_CONFIGS`, chosen by ``model.name``: :func:`model_config`),
``solid`` (:class:`~lsc4rec.models.solid.solid_config.SolidSettings`), ``mergenet``
(:class:`~lsc4rec.models.mergenet.mergenet_config.MergeNetSettings`), ``text``
(:class:`~lsc4rec.text.text_settings.TextSettings`) and ``llm``, whose keys depend on the chosen LLM, by one
settings class per kind (:data:`lsc4rec.models.llm.llm_settings.LLM_SETTINGS`, chosen by ``llm.name``:
:func:`llm_settings`).

An entry point also refuses a key it cannot honour: :func:`refuse_unhonoured` compares the composed config
with the entry point's defaults and names any key in its list of ignored keys that the user changed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from lsc4rec.config import compose_config, overrides_from_run_config
from lsc4rec.data.replay import Replay
from lsc4rec.models.llm.llm_settings import LLMSettings, llm_settings_class, unset_keys
from lsc4rec.models.mergenet.mergenet_config import MergeNetSettings
from lsc4rec.models.solid.dual_model import check_base, custom_trunk_config, is_custom_base
from lsc4rec.models.solid.solid_config import SolidConfig, SolidSettings
from lsc4rec.models.srm import CustomSRMConfig, SRMConfig
from lsc4rec.models.srm.custom import check_constructor_params, load_srm_class
from lsc4rec.privacy import PrivacySettings
from lsc4rec.text.text_settings import TextSettings
from lsc4rec.tracking import TrackingSettings
from lsc4rec.training import MODEL_CONFIGS, EvalSettings, TrainSettings

__all__ = [
    "CENTRALIZED_IGNORES",
    "FEDERATED_IGNORES",
    "MERGENET_STUDY_IGNORES",
    "REQUEST_CURVE_IGNORES",
    "SOLID_STUDY_IGNORES",
    "CentralizedSettings",
    "CollabSettings",
    "DataSettings",
    "EvalSettings",
    "FaultSettings",
    "FederatedRunSettings",
    "FederatedSettings",
    "MergeNetStudySettings",
    "RequestCurveSettings",
    "RequestSettings",
    "RunSettings",
    "ServerOptimizerSettings",
    "SettingsError",
    "SolidStudySettings",
    "StrategySettings",
    "federated_settings",
    "federated_settings_from_overrides",
    "federated_settings_from_run_config",
    "group_selections",
    "llm_settings",
    "model_config",
    "refuse_unhonoured",
    "refuse_unread_keys",
    "typed_run",
    "typed_section",
]

T = TypeVar("T")


class SettingsError(ValueError):
    """A config value that the typed settings refuse; the message names the dotted key."""


# --------------------------------------------------------------------------------------------- the groups
@dataclass(frozen=True)
class DataSettings:
    """Which dataset and how long a history the models read (``conf/dataset/*.yaml``)."""

    name: str
    path: str | None
    format: str
    max_len: int
    text_path: str | None = None
    #: Keep only users and items with at least this many interactions (k-core, to the fixed point); 0 = off.
    kcore: int = 0


#: What a hostile partition (``federated.faults.hostile``) does to its well-formed reply
#: (:mod:`lsc4rec.client.fault_drills`).
HOSTILE_ATTACKS = ("scale", "flip", "count", "poison", "nonfinite")


@dataclass(frozen=True)
class FaultSettings:
    """Fault drills: comma-separated partition ids that crash, send a malformed update or answer late, and
    partitions that act hostile (``attack``: an update scaled or sign-flipped by ``attack_scale``, a claim of
    ``attack_examples`` examples, training on poisoned data, or non-finite values)."""

    crash: str = ""
    malformed: str = ""
    delay: str = ""
    delay_seconds: float = 0.0
    hostile: str = ""
    attack: str = "scale"
    attack_scale: float = 1e6
    attack_examples: float = 1e9

    def __post_init__(self) -> None:
        if self.attack not in HOSTILE_ATTACKS:
            raise ValueError(
                f"federated.faults.attack={self.attack!r} is not an attack; valid: {list(HOSTILE_ATTACKS)}"
            )
        if not math.isfinite(self.attack_scale) or self.attack_scale <= 0:
            raise ValueError(
                f"federated.faults.attack_scale={self.attack_scale} must be a positive number "
                "(the flip attack negates it)"
            )
        if not math.isfinite(self.attack_examples) or self.attack_examples <= 0:
            raise ValueError(f"federated.faults.attack_examples={self.attack_examples} must be > 0")


@dataclass(frozen=True)
class FederatedSettings:
    """Rounds, shards, evaluation, checkpoints and the launcher (``conf/federated/default.yaml``)."""

    rounds: int
    local_epochs: int
    round_lr_decay: float
    warm_start_epochs: int
    initial_weights: str | None
    keep_optimizer_state: bool
    users_per_node: int
    partition_seed: int
    fraction_evaluate: float
    server_eval_every: int
    round_timeout: float
    min_available_nodes: int
    wait_for_nodes_seconds: float
    checkpoint: bool
    resume: bool
    faults: FaultSettings
    runtime: str
    num_supernodes: int
    launch_timeout: float
    #: ``host:port`` of a running Ray cluster the simulation joins (None: Flower starts Ray on this machine).
    ray_address: str | None = None
    #: Each user's most recent training interactions that arrive during the run (0 = all known at round 1).
    replay_interactions: int = 0
    #: The last round serves no arrivals and trains on all of them (the final model has seen every one).
    replay_closing_round: bool = False
    #: Codebook level sizes of the compact item-text carrier (empty: the float16 matrix travels).
    item_text_codes: tuple[int, ...] = ()
    #: Where each node saves its state every round for a resume (None: ``output_dir/run_name/node-state``).
    node_state_dir: str | None = None
    #: The global model's item table starts from the items' projected text vectors instead of random rows.
    text_started_items: bool = False
    #: The devices' learning rate in round 1 (None: ``train.lr``, which the server's warm start also uses).
    local_lr: float | None = None
    #: Instructions in flight at most (0: all at once; None: a window under Flower's simulation runtime only,
    #: :func:`lsc4rec.server.reply_stream.dispatch_window`).
    dispatch_window: int | None = None
    #: The last round's last N local epochs take the learning rate linearly down to 0, step by step (0: off).
    final_decay_epochs: int = 0

    @property
    def replay(self) -> Replay:
        """The arrival schedule of the run (:mod:`lsc4rec.data.replay`)."""
        return Replay(self.replay_interactions, self.rounds, self.replay_closing_round)

    def __post_init__(self) -> None:
        for name in ("rounds", "local_epochs", "server_eval_every", "num_supernodes", "min_available_nodes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"federated.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.fraction_evaluate <= 1.0:
            raise SettingsError(
                f"federated.fraction_evaluate must be in [0, 1], got {self.fraction_evaluate}"
            )
        if not 0.0 < self.round_lr_decay <= 1.0:
            raise SettingsError(f"federated.round_lr_decay must be in (0, 1], got {self.round_lr_decay}")
        if self.dispatch_window is not None and self.dispatch_window < 0:
            raise SettingsError(
                f"federated.dispatch_window must be >= 0 (0: all at once) or null, got {self.dispatch_window}"
            )
        if not 0 <= self.final_decay_epochs <= self.local_epochs:
            raise SettingsError(
                f"federated.final_decay_epochs must be in [0, federated.local_epochs = {self.local_epochs}], "
                f"got {self.final_decay_epochs}"
            )
        if self.local_lr is not None and not (math.isfinite(self.local_lr) and self.local_lr > 0):
            raise SettingsError(f"federated.local_lr must be a positive number or null, got {self.local_lr}")
        for name in ("users_per_node", "warm_start_epochs", "replay_interactions"):
            if getattr(self, name) < 0:
                raise SettingsError(f"federated.{name} must be >= 0, got {getattr(self, name)}")
        try:
            # The arrival schedule checks its own rules (a closing round needs two rounds).
            _ = self.replay
        except ValueError as error:
            raise SettingsError(str(error)) from None
        if self.runtime not in ("flower", "inprocess"):
            raise SettingsError(f"federated.runtime must be flower or inprocess, got {self.runtime!r}")
        if self.text_started_items and self.initial_weights:
            raise SettingsError(
                "federated.text_started_items=true and federated.initial_weights both set the initial item "
                "table: keep one"
            )
        if any(size < 1 or size > 65536 for size in self.item_text_codes):
            raise SettingsError(
                "federated.item_text_codes must be codebook level sizes in 1..65536, got "
                f"{list(self.item_text_codes)}"
            )
        if self.ray_address is not None:
            host, _, port = str(self.ray_address).rpartition(":")
            if not host or not port.isdigit():
                raise SettingsError(
                    "federated.ray_address must be host:port of a Ray cluster's head (ray start --head), "
                    f"got {self.ray_address!r}"
                )
            if self.runtime != "flower":
                raise SettingsError(
                    "federated.ray_address: only federated.runtime=flower runs on Ray (inprocess runs the "
                    "handlers in this process)"
                )


@dataclass(frozen=True)
class ServerOptimizerSettings:
    """The server's step on the aggregated pseudo-gradient (``strategy.server_optimizer``)."""

    name: str
    lr: float
    momentum: float
    beta2: float
    eps: float


@dataclass(frozen=True)
class StrategySettings:
    """Aggregation rule, node sampling and server optimizer (``conf/strategy/*.yaml``)."""

    name: str
    rule: str
    proximal_mu: float
    trim_fraction: float
    fraction_train: float
    min_train_replies: int
    server_optimizer: ServerOptimizerSettings
    row_weighting: bool
    #: A node's claimed example count weighs at most this many times the round's median claim (0: as claimed).
    max_example_ratio: float = 0.0
    #: Each update's L2 norm is bounded by this many times the round's median update norm (0: unbounded).
    update_norm_ratio: float = 0.0
    #: Dotted path of a Flower ``Strategy`` that aggregates instead of lsc4rec's (None: lsc4rec's).
    flower_class: str | None = None
    #: Keyword arguments of ``flower_class`` (e.g. ``{fraction_train: 1.0, eta: 0.01}``).
    flower_kwargs: Any = None

    def __post_init__(self) -> None:
        # Checked here too, not only by the strategy in the ServerApp: a bad value stops the run at once.
        if not 0.0 < self.fraction_train <= 1.0:
            raise SettingsError(f"strategy.fraction_train must be in (0, 1], got {self.fraction_train}")
        kwargs = self.flower_kwargs
        if isinstance(kwargs, DictConfig):
            kwargs = OmegaConf.to_container(kwargs, resolve=True)
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise SettingsError(f"strategy.flower_kwargs must be a group of keys, got {kwargs!r}")
        object.__setattr__(self, "flower_kwargs", dict(kwargs or {}))
        if self.flower_class is None:
            return
        # A Flower strategy aggregates by itself: lsc4rec's aggregation keys would be ignored: refused.
        own = {
            "strategy.rule": (self.rule, "fedavg"),
            "strategy.proximal_mu": (self.proximal_mu, 0.0),
            "strategy.trim_fraction": (self.trim_fraction, 0.0),
            "strategy.server_optimizer.name": (self.server_optimizer.name, "none"),
            "strategy.row_weighting": (self.row_weighting, False),
            "strategy.max_example_ratio": (self.max_example_ratio, 0.0),
            "strategy.update_norm_ratio": (self.update_norm_ratio, 0.0),
        }
        for key, (value, neutral) in own.items():
            if value != neutral:
                raise SettingsError(
                    f"{key}={value} has no effect with strategy.flower_class={self.flower_class} (the Flower "
                    f"strategy aggregates): leave it at {neutral} or set it through strategy.flower_kwargs"
                )


@dataclass(frozen=True)
class CollabSettings:
    """Device–cloud collaboration: the candidate service, fusion, collaborative training (``conf/collab``)."""

    enabled: bool
    service_address: str
    service_certificate: str | None
    service_key: str | None
    service_root_certificates: str | None
    service_public_address: str | None
    service_timeout: float
    service_runtime: str
    service_batch_delay_ms: float | None
    service_max_queue: int
    cloud_lag: int
    cloud_users: float
    #: Users holding their last stale item out for the cloud's validation (0 = every user with two or more).
    cloud_validation_users: int
    candidates: int
    candidate_pool: str
    device_candidates: int
    baseline_llm_path: str | None
    #: A number, or ``auto`` (chosen on validation by the request-curve experiment).
    alpha: float | str
    alpha_grid: tuple[float, ...]
    normalization: str
    #: Weight of the content term (a number >= 0, or ``auto``: chosen on validation with alpha).
    content_weight: float | str
    content_grid: tuple[float, ...]
    content_items: int
    content_decay: float
    srm_training: str
    srm_epochs: int
    hard_negatives: int
    random_negatives: int
    distill_weight: float
    distill_temperature: float
    srm_path: str | None

    def __post_init__(self) -> None:
        if isinstance(self.alpha, str) and self.alpha != "auto":
            raise SettingsError(f"collab.alpha must be a number in [0, 1] or auto, got {self.alpha!r}")
        if not isinstance(self.alpha, str) and not 0.0 <= self.alpha <= 1.0:
            raise SettingsError(f"collab.alpha must be in [0, 1], got {self.alpha}")
        if isinstance(self.content_weight, str) and self.content_weight != "auto":
            raise SettingsError(
                f"collab.content_weight must be a number >= 0 or auto, got {self.content_weight!r}"
            )
        if not isinstance(self.content_weight, str) and self.content_weight < 0:
            raise SettingsError(f"collab.content_weight must be >= 0, got {self.content_weight}")
        if any(w < 0 for w in self.content_grid) or not self.content_grid:
            raise SettingsError(f"collab.content_grid must be weights >= 0, got {list(self.content_grid)}")
        if self.distill_weight < 0 or self.distill_temperature <= 0:
            raise SettingsError(
                f"collab.distill_weight must be >= 0 and collab.distill_temperature > 0, got "
                f"{self.distill_weight} and {self.distill_temperature}"
            )
        if self.content_items < 1:
            raise SettingsError(f"collab.content_items must be >= 1, got {self.content_items}")
        if self.cloud_validation_users < 0:
            raise SettingsError(
                "collab.cloud_validation_users must be >= 0 (0 = every user), got "
                f"{self.cloud_validation_users}"
            )
        if not 0.0 < self.content_decay <= 1.0:
            raise SettingsError(f"collab.content_decay must be in (0, 1], got {self.content_decay}")
        if self.srm_training not in ("standard", "collaborative"):
            raise SettingsError(
                f"collab.srm_training must be standard or collaborative, got {self.srm_training!r}"
            )
        if self.service_runtime not in ("auto", "onnx", "torch"):
            raise SettingsError(
                f"collab.service_runtime must be auto, onnx or torch, got {self.service_runtime!r}"
            )
        if self.service_batch_delay_ms is not None and not self.service_batch_delay_ms >= 0:
            raise SettingsError(
                f"collab.service_batch_delay_ms must be >= 0 or null (no micro-batching), got "
                f"{self.service_batch_delay_ms}"
            )
        if self.service_max_queue < 1:
            raise SettingsError(f"collab.service_max_queue must be >= 1, got {self.service_max_queue}")


@dataclass(frozen=True)
class RequestSettings:
    """When a device asks the cloud for a fresh list (``conf/request/default.yaml``)."""

    score: str
    compare: tuple[str, ...]
    model_path: str | None
    k: int
    ratios: tuple[float, ...]
    target_ratio: float
    mode: str
    seed: int

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_ratio <= 1.0:
            raise SettingsError(f"request.target_ratio must be in [0, 1], got {self.target_ratio}")
        if self.mode not in ("intelligent", "random"):
            raise SettingsError(f"request.mode must be intelligent or random, got {self.mode!r}")


# ------------------------------------------------------------------------------ the entry points' runs
@dataclass(frozen=True)
class RunSettings:
    """What every entry point reads besides its groups: seed, threads, where the run writes and what it
    logs to (``tracking``)."""

    seed: int
    threads: int | None
    output_dir: str
    experiment: str
    run_name: str
    data: DataSettings
    #: Where the run logs its config and metrics as it goes (TensorBoard, MLflow, W&B: lsc4rec.tracking).
    tracking: TrackingSettings
    #: The resolved config as plain data, for ``metrics.json``.
    record: dict = field(compare=False, repr=False)


@dataclass(frozen=True)
class FederatedRunSettings(RunSettings):
    """Everything a federated run reads: the ServerApp, the ClientApp and the launcher share it."""

    runtime: str
    onnx_providers: tuple[str, ...]
    train: TrainSettings
    eval: EvalSettings
    federated: FederatedSettings
    strategy: StrategySettings
    collab: CollabSettings
    request: RequestSettings
    privacy: PrivacySettings
    model: SRMConfig
    llm: LLMSettings
    text: TextSettings
    solid: SolidSettings
    mergenet: MergeNetSettings

    def __post_init__(self) -> None:
        if self.runtime not in ("torch", "onnx"):
            raise SettingsError(f"runtime must be torch or onnx, got {self.runtime!r}")


@dataclass(frozen=True)
class CentralizedSettings(RunSettings):
    """The centralized baseline: one SRM on every user's sequences (``python -m ...centralized``)."""

    train: TrainSettings
    eval: EvalSettings
    model: SRMConfig
    solid: SolidSettings
    # Read when the model has a text part (model.item_text) or SOLID's codebook reads text.
    text: TextSettings


@dataclass(frozen=True)
class SolidStudySettings(CentralizedSettings):
    """The SOLID study on a sparse device (``conf/solid_run.yaml``)."""

    solid_variants: tuple[str, ...]
    solid_old_features: tuple[str, ...]
    device_users: float
    new_item_share: float


@dataclass(frozen=True)
class MergeNetStudySettings(CentralizedSettings):
    """The MergeNet / KD study on a sparse device (``conf/mergenet_run.yaml``)."""

    llm: LLMSettings
    mergenet: MergeNetSettings
    collab: CollabSettings
    mergenet_variants: tuple[str, ...]
    new_item_share: float


@dataclass(frozen=True)
class RequestCurveSettings(CentralizedSettings):
    """The collaboration experiment: LLM vs SRM vs fused, and the request-ratio curve."""

    llm: LLMSettings
    collab: CollabSettings
    request: RequestSettings


def typed_run(cfg: DictConfig, cls: type[T], ignored: Mapping[str, str]) -> T:
    """The entry point's settings ``cls`` from its composed config: every field typed and checked, the
    groups of ``ignored`` left out (:func:`refuse_unread_keys` guards them), any other key refused."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    skipped = {key.split(".")[0] for key in ignored} | {"hydra"}
    unknown = sorted(k for k in cfg if k not in names and k not in skipped)
    if unknown:
        raise SettingsError(f"unknown key {unknown[0]} for {cls.__name__}")
    record, resolved = _resolved(cfg)
    return typed_section({k: v for k, v in resolved.items() if k in names}, cls, "", extra={"record": record})


def _resolved(cfg: DictConfig) -> tuple[dict, DictConfig]:
    """The config resolved once (``${now:...}`` in run_name included), as plain data and as a config."""
    record = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(record, dict)
    return record, OmegaConf.create(record)


#: Keys a federated run does not read, with where they are honoured instead. Changing one is an error.
FEDERATED_IGNORES = {
    "collab.srm_path": "a federated run trains its SRM; loading one is lsc4rec.simulations.request_curve's",
    "collab.baseline_llm_path": "federated runs serve one cloud LLM (llm.path)",
    "request.compare": "the request-score sweep is lsc4rec.simulations.request_curve's",
    "request.ratios": "the request-ratio sweep is lsc4rec.simulations.request_curve's (devices use "
    "request.target_ratio)",
    "request.seed": "devices draw random requests from seed (request.mode=random)",
    "collab.content_grid": "the content weight is chosen on validation by lsc4rec.simulations.request_curve; "
    "federated runs take collab.content_weight as a number",
    "train.epochs": "a round trains federated.local_epochs epochs",
    "train.patience": "federated runs keep the best round by server validation, without early stopping (only "
    "the warm start, federated.warm_start_epochs > 0, stops early)",
    "train.eval_every": "the server evaluates every federated.server_eval_every rounds",
    "train.max_minutes": "a federated run lasts federated.rounds rounds",
    "train.refit": "refitting on validation interactions is lsc4rec.simulations.centralized's",
    "train.lr_decay": "federated runs decay the learning rate per round: federated.round_lr_decay",
    "train.lr_decay_patience": "federated runs decay the learning rate per round: federated.round_lr_decay",
}


_DEVICE_RUNTIME = "device inference runs only in federated runs' client-side evaluation"
_FEDERATION = "only federated runs (python -m lsc4rec.simulations.federated, flwr run) read it"

#: Keys and groups the centralized baseline does not read.
CENTRALIZED_IGNORES = {
    "federated": _FEDERATION,
    "strategy": _FEDERATION,
    "privacy": _FEDERATION,
    "collab": "the collaboration experiment is lsc4rec.simulations.request_curve",
    "request": "the collaboration experiment is lsc4rec.simulations.request_curve",
    "llm": "the cloud LLM is trained by request_curve, mergenet and federated runs",
    "mergenet": "MergeNet runs in lsc4rec.simulations.mergenet and federated runs",
    "runtime": _DEVICE_RUNTIME,
    "onnx_providers": _DEVICE_RUNTIME,
}

#: Keys and groups the request-curve (collaboration) experiment does not read.
REQUEST_CURVE_IGNORES = {
    **{
        f"collab.service_{name}": "only federated runs serve the cloud LLM over gRPC"
        for name in ("runtime", "batch_delay_ms", "max_queue")
    },
    "federated": _FEDERATION,
    "strategy": _FEDERATION,
    "privacy": _FEDERATION,
    "mergenet": "MergeNet runs in lsc4rec.simulations.mergenet and federated runs",
    "runtime": _DEVICE_RUNTIME,
    "onnx_providers": _DEVICE_RUNTIME,
}

#: Keys and groups the SOLID study does not read.
SOLID_STUDY_IGNORES = {
    "federated": _FEDERATION,
    "strategy": _FEDERATION,
    "privacy": _FEDERATION,
    "collab": "the collaboration experiment is lsc4rec.simulations.request_curve",
    "request": "the collaboration experiment is lsc4rec.simulations.request_curve",
    "llm": "the SOLID study trains no cloud LLM",
    "mergenet": "MergeNet runs in lsc4rec.simulations.mergenet and federated runs",
    "runtime": _DEVICE_RUNTIME,
    "onnx_providers": _DEVICE_RUNTIME,
}

#: Keys and groups the MergeNet study does not read.
MERGENET_STUDY_IGNORES = {
    "federated": _FEDERATION,
    "strategy": _FEDERATION,
    "privacy": _FEDERATION,
    "request": "the collaboration experiment is lsc4rec.simulations.request_curve",
    "solid": "SOLID runs in lsc4rec.simulations.solid, centralized and federated runs (model=solid)",
    # The study reads collab.cloud_lag and cloud_users (the cloud's view of users), nothing else of collab.
    **{
        f"collab.{f.name}": "the collaboration experiment is lsc4rec.simulations.request_curve"
        for f in dataclasses.fields(CollabSettings)
        if f.name not in ("cloud_lag", "cloud_users")
    },
    "runtime": _DEVICE_RUNTIME,
    "onnx_providers": _DEVICE_RUNTIME,
}


def federated_settings(cfg: DictConfig, defaults: DictConfig | None = None) -> FederatedRunSettings:
    """The typed settings of a federated run; with ``defaults`` (the run's config before the user's
    overrides) also refuse an ignored key the user changed (:data:`FEDERATED_IGNORES`)."""
    if defaults is not None:
        ignored = dict(FEDERATED_IGNORES)
        if int(OmegaConf.select(cfg, "federated.warm_start_epochs", default=0) or 0) > 0:
            del ignored["train.patience"]  # the warm start's early stopping reads it
        refuse_unhonoured(cfg, defaults, ignored, "a federated run")
    record, resolved = _resolved(cfg)
    settings = typed_section(
        {k: v for k, v in resolved.items() if k != "hydra"},
        FederatedRunSettings,
        "",
        extra={"record": record},
    )
    if settings.collab.enabled and settings.collab.alpha == "auto" and not settings.federated.replay.enabled:
        raise SettingsError(
            "collab.alpha=auto: the server chooses the fusion weight on the interactions that arrive during "
            "the run, so it needs federated.replay_interactions > 0; else give a number "
            "(lsc4rec.simulations.request_curve chooses it on validation)"
        )
    if settings.collab.content_weight == "auto":
        raise SettingsError(
            "collab.content_weight=auto is chosen on validation by lsc4rec.simulations.request_curve; a "
            "federated run needs a number (0 = no content term)"
        )
    if settings.collab.srm_training == "collaborative":
        if not settings.collab.enabled:
            raise SettingsError(
                "collab.srm_training=collaborative trains the devices on the cloud's lists: it needs "
                "collab.enabled=true"
            )
        if settings.privacy.mode == "local" and settings.collab.distill_weight > 0:
            raise SettingsError(
                "collab.distill_weight > 0 with privacy.mode=local: DP-SGD's pass over the cloud's lists "
                "trains the rerank loss only; set collab.distill_weight=0"
            )
        if settings.privacy.freeze_item_embeddings and settings.privacy.mode != "local":
            # Under local DP the pass is part of the DP-SGD round, which keeps the table frozen too.
            raise SettingsError(
                "privacy.freeze_item_embeddings=true with collab.srm_training=collaborative: the pass over "
                "the cloud's lists trains the item table outside local DP; use collab.srm_training=standard "
                "or privacy.mode=local"
            )
    _check_privacy(settings)
    return settings


def _check_privacy(run: FederatedRunSettings) -> None:
    """Refuse, before any work, combinations that would release un-noised information about devices under
    DP or that DP training cannot run (checked at the entry point, not on a node at training time)."""
    mode = run.privacy.mode
    if mode == "none":
        return
    refusals = {
        "strategy.row_weighting sends per-item counts in clear": run.strategy.row_weighting,
        "strategy.flower_class: DP is wired around lsc4rec's own strategy only (central DP's noise assumes "
        "equal node weights)": run.strategy.flower_class is not None,
    }
    if mode == "local":
        refusals.update(
            {
                "FedProx (strategy.proximal_mu > 0) is not supported": run.strategy.proximal_mu > 0,
                "model.item_text with privacy.grad_sample_mode=hooks: Opacus' hooks cannot see the text "
                "part's projection of the whole catalogue; use grad_sample_mode=rows or functorch": (
                    run.model.item_text != "none" and run.privacy.grad_sample_mode == "hooks"
                ),
            }
        )
    if mode == "central" and run.strategy.rule != "fedavg":
        rule = run.strategy.rule
        refusals[f"central DP calibrates its noise to a mean: strategy.rule must be fedavg, not {rule}"] = (
            True
        )
    for reason, refused in refusals.items():
        if refused:
            raise SettingsError(f"privacy.mode={mode}: {reason}")


def group_selections(overrides: Sequence[str]) -> list[str]:
    """The overrides that pick a group's YAML or set a top-level value (``model=solid``, ``seed=1``): what
    the defaults of a run with these overrides are composed from."""
    return [o for o in overrides if "." not in o.split("=", 1)[0]]


def federated_settings_from_overrides(overrides: Sequence[str]) -> FederatedRunSettings:
    """Compose ``federated_run`` with ``overrides`` and type it; refuse ignored keys the overrides change."""
    cfg = compose_config(list(overrides), config_name="federated_run")
    defaults = compose_config(group_selections(overrides), config_name="federated_run")
    return federated_settings(cfg, defaults)


def federated_settings_from_run_config(run_config: Mapping[str, Any]) -> FederatedRunSettings:
    """The typed settings of a Flower run (the ServerApp and every ClientApp build the same ones)."""
    return federated_settings_from_overrides(overrides_from_run_config(run_config))


def refuse_unhonoured(
    cfg: DictConfig, defaults: DictConfig, ignored: Mapping[str, str], entry_point: str
) -> None:
    """Raise naming every key under an ``ignored`` key or group (``train.epochs``, ``federated``) whose value
    in ``cfg`` differs from ``defaults``; the message says where each is honoured instead."""
    ours, theirs = _flat(cfg), _flat(defaults)
    changed = []
    for prefix, reason in ignored.items():
        keys = sorted(k for k in ours.keys() | theirs.keys() if k == prefix or k.startswith(prefix + "."))
        changed.extend(f"{k}={ours.get(k)!r} ({reason})" for k in keys if ours.get(k) != theirs.get(k))
    if changed:
        raise SettingsError(f"{entry_point} cannot honour: " + "; ".join(changed))


def refuse_unread_keys(
    cfg: DictConfig, config_name: str, ignored: Mapping[str, str], entry_point: str
) -> None:
    """:func:`refuse_unhonoured` inside a ``@hydra.main`` entry point: the defaults are ``config_name``
    composed with the command line's group choices."""
    overrides = list(HydraConfig.get().overrides.task)
    refuse_unhonoured(cfg, compose_config(group_selections(overrides), config_name), ignored, entry_point)


def _flat(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf of ``cfg`` by dotted key (lists as lists), ``hydra`` and unresolvable values left out."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return {k: v for k, v in out.items() if not k.startswith("hydra")}


# ------------------------------------------------------------------------------------------ conversion
def model_config(section: Mapping[str, Any], prefix: str = "model", label: str | None = None) -> SRMConfig:
    """The typed config of the model ``section`` (the composed ``model:`` group) describes: the class of
    ``model.name`` (:data:`~lsc4rec.training.MODEL_CONFIGS`) built from the other keys, each checked.

    Raises :class:`SettingsError` naming ``model.<key>``, the model and its accepted keys for a key the model
    does not take, and naming the key and the value for a value of the wrong type or out of range.
    ``prefix`` and ``label`` name the section in errors (SOLID's base: ``model.base_params``).
    ``model=custom`` (a user's class by its dotted path) is checked up front too: :func:`_custom_params`.
    """
    if isinstance(section, DictConfig):
        # Plain values (a user's constructor gets Python containers); an unset key (???) reads as its text.
        section = OmegaConf.to_container(section, resolve=True)  # type: ignore[assignment]
    values = {str(k): v for k, v in section.items()}
    name = values.pop("name", None)
    if name not in MODEL_CONFIGS:
        raise SettingsError(f"{prefix}.name must be one of {sorted(MODEL_CONFIGS)}, got {name!r}")
    cls = MODEL_CONFIGS[str(name)]
    accepted = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(k for k in values if k not in accepted)
    if unknown:
        raise SettingsError(
            f"unknown key {prefix}.{unknown[0]} for {label or f'{prefix}.name={name}'} "
            f"(accepted: {', '.join(accepted)})"
        )
    extra: dict[str, Any] = {}
    if cls is SolidConfig:
        extra["base_params"] = _solid_base_config(values, prefix)
    if cls is CustomSRMConfig:
        extra["params"] = _custom_params(values, prefix)
    return typed_section(values, cls, prefix, extra=extra)


def _custom_params(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``model.params`` of a user's class (``model=custom``), checked against its constructor: the class
    ``model.target`` names imports and is a :class:`SequentialRecommender`, every key is an argument of its
    constructor and every value has the type its annotation names (where it names one the settings know)."""
    target = values.get("target")
    try:
        cls = load_srm_class(target, f"{prefix}.target")
    except ValueError as error:
        raise SettingsError(str(error)) from error
    params = values.get("params") or {}
    if not isinstance(params, Mapping):
        raise SettingsError(f"{prefix}.params must be a group of keys, got {params!r}")
    params = {str(k): v for k, v in params.items()}
    try:
        check_constructor_params(cls, params, f"{prefix}.params", f"{prefix}.target={target}")
    except ValueError as error:
        raise SettingsError(str(error)) from error
    return _typed_arguments(cls, params, f"{prefix}.params")


def _typed_arguments(cls: type, params: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``params`` for ``cls``'s constructor, each value converted to its annotation where the settings know
    the type (int, float, bool, str, tuples, unions of them); other values are passed as they are."""
    try:
        hints = typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    except Exception:  # annotations that do not resolve at run time (names a type checker alone sees)
        hints = {}
    typed = {}
    for key, value in params.items():
        try:
            typed[key] = _convert(value, hints.get(key, Any), f"{prefix}.{key}")
        except TypeError:
            # A type the settings do not convert (list[int], a user's class): the constructor checks it.
            typed[key] = value
    return typed


def _solid_base_config(values: dict[str, Any], prefix: str) -> SRMConfig:
    """The config of SOLID's trunks: ``model.base``'s config from ``model.base_params`` (popped from
    ``values``), with SOLID's width and dropout unless ``base_params`` sets them."""
    base = values.get("base", SolidConfig.base)
    try:
        check_base(base, f"{prefix}.base")
    except ValueError as error:
        raise SettingsError(str(error)) from error
    hints = {"hidden_size": int, "dropout": float}
    common = {k: _convert(values[k], hint, f"{prefix}.{k}") for k, hint in hints.items() if k in values}
    params = values.pop("base_params", None) or {}
    if not isinstance(params, Mapping):
        raise SettingsError(f"{prefix}.base_params must be a group of keys, got {params!r}")
    if "item_text" in params:
        raise SettingsError(f"{prefix}.base_params.item_text: set {prefix}.item_text (SOLID's text part)")
    if is_custom_base(base):
        # A user's class (its dotted path): its own keys, with SOLID's width and dropout where it takes them.
        hidden = common.get("hidden_size", SolidConfig.hidden_size)
        dropout = common.get("dropout", SolidConfig.dropout)
        try:
            config = custom_trunk_config(base, hidden, dropout, params, f"{prefix}.base_params")
        except ValueError as error:
            raise SettingsError(str(error)) from error
        typed = _typed_arguments(config.model_class, config.params, f"{prefix}.base_params")
        return dataclasses.replace(config, params=typed)
    return model_config(
        {"name": base, **common, **params}, f"{prefix}.base_params", label=f"{prefix}.base={base}"
    )


def llm_settings(section: Mapping[str, Any], prefix: str = "llm") -> LLMSettings:
    """The typed settings of the cloud LLM ``section`` (the composed ``llm:`` group) describes: the class of
    ``llm.name`` (:data:`~lsc4rec.models.llm.llm_settings.LLM_SETTINGS`) built from the keys, each checked.

    Raises :class:`SettingsError` naming ``llm.<key>``, the kind and its accepted keys for a key the kind does
    not take, and naming the key and the value for a value of the wrong type or out of range. A key left at
    ``???`` is no value: null where the key is optional (``llm.lists_path`` outside the pretrained-cloud
    run), else refused.
    """
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)  # type: ignore[assignment]
    if not isinstance(section, Mapping):
        raise SettingsError(f"{prefix} must be a group of keys, got {section!r}")
    values = {str(k): v for k, v in section.items()}
    try:
        cls = llm_settings_class(values, prefix)
        unset = unset_keys(cls, values, prefix)
    except ValueError as error:
        raise SettingsError(str(error)) from error
    return typed_section(values | dict.fromkeys(unset), cls, prefix)


def typed_section(section: Mapping[str, Any], cls: type[T], prefix: str, extra: Mapping | None = None) -> T:
    """Build the dataclass ``cls`` from ``section``, checking keys and types; ``prefix`` names the section
    in errors (``"federated"`` -> ``federated.rounds``). ``extra``: values for fields the section lacks."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    keys = set(section.keys())
    unknown = sorted(keys - set(fields))
    if unknown:
        raise SettingsError(f"unknown key {_dotted(prefix, unknown[0])} (known: {', '.join(sorted(fields))})")
    values: dict[str, Any] = dict(extra or {})
    for name, spec in fields.items():
        if name in values:
            continue
        if name not in keys:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise SettingsError(f"missing key {_dotted(prefix, name)}")
            continue
        values[name] = _convert(section[name], hints[name], _dotted(prefix, name))
    try:
        return cls(**values)
    except SettingsError:
        raise
    except (TypeError, ValueError) as error:
        raise SettingsError(f"{prefix or 'config'}: {error}") from error


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint``, or a :class:`SettingsError` naming ``key``."""
    if hint is Any:
        return value
    if hint is SRMConfig:
        if not isinstance(value, Mapping | DictConfig):
            raise SettingsError(f"{key} must be a group of keys, got {value!r}")
        return model_config(value, key)
    if hint is LLMSettings:
        return llm_settings(value, key)
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise SettingsError(f"{key} must not be null")
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, key)
            except SettingsError as error:
                errors.append(str(error))
        raise SettingsError(errors[-1])
    if origin is dict:
        if not isinstance(value, Mapping | DictConfig):
            raise SettingsError(f"{key} must be a group of keys, got {value!r}")
        key_hint, value_hint = typing.get_args(hint)
        return {
            _convert(k, key_hint, f"{key}.{k}"): _convert(v, value_hint, f"{key}.{k}")
            for k, v in value.items()
        }
    if origin is tuple:
        if not isinstance(value, list | tuple | ListConfig):
            raise SettingsError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping | DictConfig):
            raise SettingsError(f"{key} must be a group of keys, got {value!r}")
        return typed_section(value, hint, key)  # type: ignore[arg-type]
    if hint is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SettingsError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"settings field {key}: unsupported type {hint!r}")
