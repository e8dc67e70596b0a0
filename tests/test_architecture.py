"""The architecture's rules, checked: the device side never loads server code, the round loop fits on a
screen, message keys live in one module, and every config key an error message names exists."""

from __future__ import annotations

import ast
import functools
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lsc4rec.config import compose_config

PACKAGE = Path(__file__).resolve().parents[1] / "lsc4rec"

#: Packages of the server side: a device node (the ClientApp) must import none of them.
SERVER_SIDE = ("lsc4rec.server", "lsc4rec.strategies", "lsc4rec.simulations")


@pytest.mark.slow
def test_the_client_app_imports_no_server_code() -> None:
    probe = (
        "import sys, lsc4rec.client.app\n"
        f"print(sorted(m for m in sys.modules if m.startswith({SERVER_SIDE!r})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    ).stdout.strip()
    assert loaded == "[]", f"the ClientApp loads server modules: {loaded}"


@pytest.mark.slow
def test_the_probe_would_see_server_code() -> None:
    # The import check above must be able to fail: importing the ServerApp does load server modules.
    probe = f"import sys, lsc4rec.server.app\nprint(any(m.startswith({SERVER_SIDE!r}) for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "True"


def test_the_round_loop_fits_on_a_screen() -> None:
    from lsc4rec.server.loop import run_rounds

    lines = inspect.getsource(run_rounds).splitlines()
    assert len(lines) <= 80, f"run_rounds is {len(lines)} lines"
    assert "solid" not in "\n".join(lines).lower() and "mergenet" not in "\n".join(lines).lower()


#: Wire values of the message keys; each may appear as a literal only in lsc4rec/messages.py.
MESSAGE_KEY_VALUES = (
    "num-examples",
    "privacy-exhausted",
    "server-round",
    "proximal-mu",
    "row-counts",
    "codebook-stats",
    "codebook-version",
    "candidate-service",
    "candidate-token",
    "candidate-tls",
)


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_message_keys_are_spelled_in_one_module() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {value!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "messages.py" and "proto" not in path.parts
        for line, value in _string_constants(path)
        if value in MESSAGE_KEY_VALUES
    ]
    assert not offenders, "message keys spelled outside lsc4rec/messages.py:\n" + "\n".join(offenders)


GROUPS = "data|train|eval|model|federated|strategy|llm|text|collab|request|solid|mergenet|privacy|sweep"
#: A dotted config key inside a message, e.g. ``federated.rounds``; not part of a path or a longer name.
KEY_PATTERN = re.compile(rf"(?<![\w./-])(?:{GROUPS})\.[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*")
#: Dotted names in messages that are values, not keys: file names and MergeNet parameter slices.
NOT_KEYS = {"model.pt", "model.safetensors", "data.npz", "llm.item_embeddings", "srm.item_embeddings"}


@functools.cache
def _all_config_keys() -> frozenset[str]:
    """Every dotted key of every primary config and every group variant."""
    composed = [compose_config([], name) for name in ("config", "federated_run", "solid_run", "mergenet_run")]
    composed.append(compose_config([], "privacy_sweep"))
    composed.append(compose_config(["llm.lists_path=/lists"], "pretrained_cloud"))
    for group, names in {
        "model": ("gru4rec", "din", "ttt4rec", "solid", "sasrec_device"),
        "strategy": ("fedadam", "fedprox", "trimmed_mean", "median", "fedavgm"),
        "llm": ("pretrained", "smollm2"),
    }.items():
        composed.extend(compose_config([f"{group}={name}"]) for name in names)
    keys: set[str] = set()

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                dotted = f"{prefix}.{key}" if prefix else str(key)
                keys.add(dotted)
                walk(value, dotted)

    for cfg in composed:
        walk(OmegaConf.to_container(cfg, resolve=False), "")
    return frozenset(keys)


def _keys_named_in_errors(path: Path) -> list[tuple[int, str]]:
    """``(line, key)`` for every dotted config key in the message of a ``raise`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found.extend((node.lineno, key) for key in KEY_PATTERN.findall(part.value))
    return found


def test_every_config_key_named_in_an_error_exists() -> None:
    known = _all_config_keys()
    named = [
        (path, line, key)
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, key in _keys_named_in_errors(path)
        if key not in NOT_KEYS
    ]
    assert len(named) > 50, "the scan should see the many keys error messages name"
    missing = [f"{p.relative_to(PACKAGE.parent)}:{line}: {key}" for p, line, key in named if key not in known]
    assert not missing, "error messages name keys that do not exist:\n" + "\n".join(missing)


def test_the_key_scan_catches_a_wrong_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('def f(lr):\n    raise ValueError(f"strategy.server_lr must be > 0, got {lr}")\n')
    (key,) = [key for _, key in _keys_named_in_errors(bad)]
    assert key == "strategy.server_lr" and key not in _all_config_keys()


@pytest.mark.parametrize("module", ["lsc4rec.server.loop", "lsc4rec.messages", "lsc4rec.settings"])
def test_core_modules_document_every_public_name(module: str) -> None:
    imported = __import__(module, fromlist=["*"])
    for name in imported.__all__:
        value = getattr(imported, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{module}.{name} has no docstring"


def test_no_package_module_is_named_like_a_test() -> None:
    # `flwr build` leaves files named like tests (*_test.py, test_*.py) out of the app bundle, so such a
    # module would be missing on every SuperLink and SuperNode (exit code 607 at import).
    named_like_tests = [
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if path.name.endswith("_test.py") or path.name.startswith("test_")
    ]
    assert not named_like_tests
