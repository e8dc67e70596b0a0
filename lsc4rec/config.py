"""Locate and compose the Hydra experiment configs in ``conf/``.

One set of YAML drives every entry point: ``python -m lsc4rec.simulations.X key=value`` (through
``@hydra.main``) and programmatic callers such as tests and the Flower apps (through :func:`compose_config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
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
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=False)
    return cfg


def to_plain_dict(cfg: DictConfig) -> dict:
    """Resolve interpolations and return a JSON-serialisable dict (for metrics.json)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return resolved
