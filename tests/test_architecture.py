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
        "import sys, lsc4rec.client.client_app\n"
        f"print(sorted(m for m in sys.modules if m.startswith({SERVER_SIDE!r})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    ).stdout.strip()
    assert loaded == "[]", f"the ClientApp loads server modules: {loaded}"


@pytest.mark.slow
def test_the_probe_would_see_server_code() -> None:
    # The import check above must be able to fail: importing the ServerApp does load server modules.
    probe = (
        "import sys, lsc4rec.server.server_app\n"
        f"print(any(m.startswith({SERVER_SIDE!r}) for m in sys.modules))"
    )
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


GROUPS = (
    "data|train|eval|model|federated|strategy|llm|text|collab|request|solid|mergenet|privacy|sweep|tracking"
)
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
        "strategy": ("fedadam", "fedprox", "trimmed_mean", "median", "fedavgm", "flower"),
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


# --- The import graph -------------------------------------------------------------------------------------

#: The package's layers, lowest first: a module may import from its own layer and the layers below, never
#: from a layer above (the ServerApp may use the device code's wire formats, never the other way round).
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer)
    for layer in (
        {
            "lsc4rec",
            "lsc4rec.logs",
            "lsc4rec.torch_device",
            "lsc4rec.proto",
            "lsc4rec.metrics",
            "lsc4rec.config",
            "lsc4rec.reporting",
            "lsc4rec.tracking",
            "lsc4rec.codebook",
            "lsc4rec.pretrained_weights",
            "lsc4rec.argument_types",
        },
        {"lsc4rec.data"},
        {"lsc4rec.text"},
        {"lsc4rec.models"},
        {"lsc4rec.training", "lsc4rec.privacy"},
        {"lsc4rec.settings"},
        {"lsc4rec.messages"},
        {"lsc4rec.strategies", "lsc4rec.serving"},
        {"lsc4rec.client"},
        {"lsc4rec.server"},
        {"lsc4rec.cli"},
        {"lsc4rec.simulations"},
    )
)


def _module_names(package: Path) -> dict[str, Path]:
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in the file (inside functions and
    ``TYPE_CHECKING`` blocks too: a circle through a deferred import is still a circle)."""
    modules = _module_names(package)
    root = package.name

    def known(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import (write the absolute module path)")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(root):
                targets.update(known(f"{node.module}.{alias.name}") for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(known(a.name) for a in node.names if a.name.startswith(root))
        targets.discard(name)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _folder_graph(graph: dict[str, set[str]], package: Path) -> dict[str, set[str]]:
    """The same graph between folders (a module at the package's top level stands for itself)."""
    modules = _module_names(package)

    def folder(name: str) -> str:
        path = modules[name]
        return name if path.parent == package else ".".join(path.parent.relative_to(package.parent).parts)

    folders: dict[str, set[str]] = {}
    for name, targets in graph.items():
        own = folder(name)
        folders.setdefault(own, set()).update(folder(t) for t in targets if folder(t) != own)
    return folders


def _layer(name: str) -> int:
    for depth in range(name.count(".") + 1, 0, -1):
        prefix = ".".join(name.split(".")[:depth])
        for number, layer in enumerate(LAYERS):
            if prefix in layer:
                return number
    raise AssertionError(f"{name} is in no layer of tests/test_architecture.py::LAYERS: add it")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import from a lower layer into a higher one."""
    return [
        f"{name} -> {target}"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if _layer(target) > _layer(name)
    ]


def test_the_import_graph_has_no_circles_and_no_upward_imports() -> None:
    graph = import_graph(PACKAGE)
    assert _cycles(graph) == [], "modules importing each other (directly or around a circle)"
    assert _cycles(_folder_graph(graph, PACKAGE)) == [], "folders importing each other"
    assert upward_imports(graph) == []


def test_the_import_checks_catch_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    package = tmp_path / "lsc4rec"
    (package / "client").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "client" / "__init__.py").write_text("")
    (package / "data.py").write_text("def f():\n    from lsc4rec.client.node import g\n")
    (package / "client" / "node.py").write_text("from lsc4rec.data import f\n")
    graph = import_graph(package)
    assert _cycles(graph) == [["lsc4rec.client.node", "lsc4rec.data"]]
    assert upward_imports(graph) == ["lsc4rec.data -> lsc4rec.client.node"]


def test_module_names_do_not_repeat_across_folders() -> None:
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py" and "proto" not in path.parts:
            seen.setdefault(path.name, []).append(str(path.relative_to(PACKAGE)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}


def _declared_run_config_keys() -> set[str]:
    import tomllib

    app = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return set(app)


def _documented_run_configs() -> list[tuple[str, str]]:
    """``(file, the quoted --run-config argument)`` for every command the docs and deploy/ show."""
    found = []
    files = [*sorted((PACKAGE.parent / "docs").rglob("*.md")), PACKAGE.parent / "README.md"]
    deploy = PACKAGE.parent / "deploy"
    files += sorted(deploy.glob("*.md")) + sorted(deploy.glob("*.py"))
    for path in files:
        for match in re.finditer(r"--run-config '([^']*)'", path.read_text()):
            found.append((str(path.relative_to(PACKAGE.parent)), match.group(1)))
    return found


def _run_config_keys(argument: str) -> set[str]:
    """The keys of a ``--run-config`` argument (``key=value`` entries, values possibly quoted)."""
    return {entry.split("=", 1)[0] for entry in re.findall(r'(\S+?=(?:"[^"]*"|\S+))', argument)}


def test_every_documented_run_config_uses_keys_flower_accepts() -> None:
    # Flower refuses a --run-config key the app does not declare ("Invalid run configuration") before the run
    # starts: a documented command with one would stop a new user at once.
    declared = _declared_run_config_keys()
    documented = _documented_run_configs()
    assert len(documented) >= 5
    for where, argument in documented:
        keys = _run_config_keys(argument)
        assert keys <= declared, (where, argument, sorted(keys - declared))


def test_the_run_config_check_would_catch_an_undeclared_key() -> None:
    assert _run_config_keys('system="base" overrides="a=1 b=2"') == {"system", "overrides"}
    assert not _run_config_keys("federated.rounds=1") <= _declared_run_config_keys()
