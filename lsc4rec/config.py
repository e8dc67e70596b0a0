"""Locate and compose the Hydra experiment configs in ``conf/``.

One set of YAML drives every entry point: ``python -m lsc4rec.simulations.X key=value`` (through
``@hydra.main``) and programmatic callers such as tests and the Flower apps (through :func:`compose_config`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """Return the folder holding ``config.yaml``: the repo's ``conf/`` or the copy packaged in a wheel."""
    # A source checkout (editable install, Flower FAB) has conf/ beside the package; a wheel has it inside.
    for candidate in (_PACKAGE_DIR.parent / "conf", _PACKAGE_DIR / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"lsc4rec configs not found: looked for config.yaml in {_PACKAGE_DIR.parent / 'conf'} and "
        f"{_PACKAGE_DIR / 'conf'}; reinstall the package or run from the repository root"
    )


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the experiment config exactly as the command line would, e.g. ``["model=gru4rec"]``."""
    if GlobalHydra.instance().is_initialized():
        # Inside a @hydra.main entry point (same conf/ search path): compose with the running instance.
        return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def to_plain_dict(cfg: DictConfig) -> dict:
    """Resolve interpolations and return a JSON-serialisable dict (for metrics.json)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return resolved


# Run-config keys that select a Hydra group instead of setting a value.
GROUP_KEYS = ("system", "dataset", "model", "strategy", "train", "eval", "federated")


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """Translate a Flower run config into Hydra overrides (one source of truth: the YAML in ``conf/``).

    Mapping: a group key (``dataset = "beauty"``) selects that group's YAML (``dataset=beauty``). Any other
    key overrides that value; nested tables give dotted keys (``rounds = 5`` under
    ``[tool.flwr.app.config.federated]`` becomes ``federated.rounds=5``, ``seed = 42`` becomes ``seed=42``).
    ``overrides = "train.lr=0.002 model.dropout=0.3"`` adds any further Hydra overrides. ``output-dir`` is not
    a Hydra key (it says where the ServerApp writes). Empty strings mean "the default".
    """
    overrides: list[str] = []
    extra = ""
    for key, value in run_config.items():
        if key == "overrides":
            extra = str(value)
            continue
        if key == "output-dir":
            continue
        if key in GROUP_KEYS:
            if str(value):
                overrides.append(f"{key}={value}")
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, str):
            # Quote strings so values like "1,3" stay one string instead of a Hydra list/sweep.
            value = "'" + value.replace("'", "\\'") + "'"
        overrides.append(f"{key}={value}")
    overrides.extend(shlex.split(extra))
    return overrides


def config_from_run_config(run_config: Mapping[str, Any]) -> DictConfig:
    """Compose the experiment config for a Flower run (ServerApp and ClientApp use the same one)."""
    return compose_config(overrides_from_run_config(run_config), config_name="federated_run")
