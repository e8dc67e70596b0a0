"""Every shell command the documentation shows works: collected from README.md, docs/**/*.md and deploy/*.md
(the deployment guides docs/ includes through snippets), then checked without running it, and the short ones
run in the slow tier.

What is collected: every line of a fenced ``bash`` / ``sh`` / ``shell`` block (``console`` blocks: the lines
after a ``$`` prompt), continuation lines joined, comments and prompts stripped; and inline code spans that
start like a command (``make X``, ``python -m lsc4rec...``, ``python deploy/X.py``,
``python benchmarks/X.py``, ``flwr run``, ``deploy/X.sh``). ``<placeholder>`` stands for a value the reader
supplies; a lone ``...`` for arguments left out.

What each shape gets (:func:`check_command`), without running anything:

- ``make T [VAR=...]``: the target exists, the variables are ones the Makefile declares, and the
  ``python -m lsc4rec...`` line ``make -n`` prints (``ARGS`` included) is checked like a command of its own;
  ``ARGS`` on a target whose recipe does not read it is refused (make would drop it silently).
- ``python -m lsc4rec.X ...``: the module exists; a Hydra entry point's overrides parse (``-m`` sweeps
  expanded as Hydra's sweeper does) and each group choice names a file of ``conf/``; in the slow tier they are
  also composed and typed the way the entry point does before it starts (unknown keys, wrong types, keys the
  entry point cannot honour and refused combinations fail: composing all of them takes about a minute); an
  argparse entry point parses its arguments with its own parser (stopped right after ``parse_args``).
- ``python deploy/X.py`` / ``python benchmarks/X.py``: the script exists and its own argparse accepts the
  flags (paths need not exist: the docs' paths are placeholders or another machine's).
- ``flwr ...``: Flower's own CLI parses the arguments; for ``flwr run`` every ``--run-config`` key must be one
  ``[tool.flwr.app.config]`` declares (Flower refuses the others with ``Invalid run configuration``, checked
  with Flower's own merge) and the Hydra overrides the run config becomes are checked as a federated run's.
- ``deploy/X.sh``: exists and is executable; ``local.sh`` / ``secure.sh`` are checked as the
  ``deploy/*.py`` command they ``exec``, their run-config argument as ``flwr run``'s.
- ``flower-superlink`` / ``flower-supernode`` / ``ray``: their own parsers accept the flags.
- ``python -c CODE``: the code compiles.
- :data:`RECOGNIZED_ONLY` (``pip``, ``source``, ``export``, ``pkill``, ``git``, ``cd``, ...): recognized, not
  checked: other programs' own commands, or system administration on a device.

Any other shape fails, naming the file and line, so that a new page's commands get a checker.

Run in the slow tier (:data:`RUN_IN_SLOW_TIER`): the commands that finish in seconds without a trained model
or a remote machine: ``python -m lsc4rec.compare`` on run folders the test writes, the credentials generator
(into a temporary folder) and the Jetson guide's ``python -c`` environment checks. Parse-only, and why: every
training run (centralized, federated, studies, sweeps: minutes to an hour on the full datasets, and none is
documented with tiny overrides), ``make run`` / ``make test`` / ``make docs`` (minutes, or a reinstall),
``flwr run`` and ``deploy/*`` (real Flower and Ray processes; covered by tests/test_flower_runs.py and the
deployment tests), the benchmarks (minutes), the candidate service and phone client (a trained LLM, a server),
and the Jetson / Ray cluster / systemd commands (another machine).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import click
import pytest
from conftest import load_script
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from lsc4rec.config import compose_config, config_dir, overrides_from_run_config
from lsc4rec.settings import (
    CENTRALIZED_IGNORES,
    MERGENET_STUDY_IGNORES,
    REQUEST_CURVE_IGNORES,
    SOLID_STUDY_IGNORES,
    CentralizedSettings,
    MergeNetStudySettings,
    RequestCurveSettings,
    SolidStudySettings,
    federated_settings,
    group_selections,
    refuse_unhonoured,
    typed_run,
    typed_section,
)

REPO = Path(__file__).resolve().parents[1]
MAKEFILE = REPO / "Makefile"


def documentation_files(root: Path = REPO) -> list[Path]:
    """The pages whose commands are checked: README.md, docs/**/*.md and deploy/*.md."""
    return [
        root / "README.md",
        *sorted((root / "docs").rglob("*.md")),
        *sorted((root / "deploy").glob("*.md")),
    ]


# ------------------------------------------------------------------------------------------- collection
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)")
# A code span may wrap onto the next line of its paragraph, never across a blank line.
CODE_SPAN = re.compile(r"(?<!`)`([^`]+?)`(?!`)", re.DOTALL)
INLINE_COMMAND = re.compile(
    r"^(?:\.venv/bin/)?(?:make\s+[a-z]"
    r"|python3?\s+(?:-m\s+lsc4rec\b|(?:deploy|benchmarks)/\S+\.py\b)"
    r"|flwr\s+run\b"
    r"|deploy/\S+\.sh\b)"
)


@dataclass(frozen=True)
class DocCommand:
    """One command shown by a page."""

    source: Path  #: the markdown file
    line: int  #: 1-based line where the command starts
    text: str  #: as shown, continuation lines joined, prompt and trailing comment removed
    inline: bool  #: an inline code span rather than a fenced block's line

    @property
    def where(self) -> str:
        """``file:line``, relative to the repository when inside it."""
        with contextlib.suppress(ValueError):
            return f"{self.source.relative_to(REPO)}:{self.line}"
        return f"{self.source}:{self.line}"


def strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` outside quotes that starts a word)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def block_commands(language: str, first_line: int, lines: Sequence[str]) -> Iterator[tuple[int, str]]:
    """``(line, command)`` for each command of a fenced shell block whose content starts at ``first_line``."""
    pending, start = "", 0
    for offset, raw in enumerate(lines):
        line = raw.strip()
        if not pending:
            if line.startswith("$ "):
                line = line[2:]
            elif language == "console":
                continue  # a console block's other lines are the commands' output
            if not line or line.startswith("#"):
                continue
            start = first_line + offset
        line = strip_comment(line) if not line.endswith("\\") else line
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        yield start, (pending + line).strip()
        pending = ""
    if pending:
        yield start, pending.strip()


def fenced_blocks(lines: Sequence[str]) -> Iterator[tuple[str, int, int]]:
    """``(language, opening line index, closing line index)`` of each fenced block of a page's ``lines``."""
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        yield opening["info"].lower(), index, end
        index = end + 1


def collect_commands(path: Path) -> list[DocCommand]:
    """Every command ``path`` shows: fenced shell blocks' lines, inline code spans shaped like a command."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[DocCommand] = []
    prose = list(lines)  # the page with every fenced block blanked: where inline spans are looked for
    for language, start, end in fenced_blocks(lines):
        if language in SHELL_LANGUAGES:
            for number, text in block_commands(language, start + 2, lines[start + 1 : end]):
                found.append(DocCommand(path, number, text, inline=False))
        for blank in range(start, min(end + 1, len(lines))):
            prose[blank] = ""
    text = "\n".join(prose)
    for match in CODE_SPAN.finditer(text):
        span = match.group(1)
        if re.search(r"\n[ \t]*\n", span):
            continue
        command = " ".join(span.split())
        if INLINE_COMMAND.match(command):
            found.append(DocCommand(path, text.count("\n", 0, match.start()) + 1, command, inline=True))
    return sorted(found, key=lambda c: c.line)


#: A ``python`` block that is a file the page has the reader write: its first line names it (``# my_srm.py``).
PAGE_FILE = re.compile(r"^#\s*([A-Za-z_]\w*\.py)\s*$")
_PAGE_FILES_ROOT = tempfile.TemporaryDirectory(prefix="lsc4rec-doc-files-")


@functools.cache
def page_files_folder(path: Path) -> Path | None:
    """A folder holding the Python files ``path`` has the reader write (its commands then import them, with
    the folder on ``PYTHONPATH`` as such a page says), or None when the page has none."""
    lines = path.read_text(encoding="utf-8").splitlines()
    files = {}
    for language, start, end in fenced_blocks(lines):
        named = PAGE_FILE.match(lines[start + 1]) if language == "python" and start + 1 < end else None
        if named:
            files[named.group(1)] = "\n".join(lines[start + 1 : end]) + "\n"
    if not files:
        return None
    folder = Path(tempfile.mkdtemp(dir=_PAGE_FILES_ROOT.name))
    for name, source in files.items():
        (folder / name).write_text(source, encoding="utf-8")
    return folder


def all_commands(root: Path = REPO) -> list[DocCommand]:
    """Every command of every documentation page."""
    return [command for path in documentation_files(root) for command in collect_commands(path)]


# --------------------------------------------------------------------------------------------- words
#: A ``<placeholder>`` (no blank at either end, so ``a < b > c`` stays a redirection) and what stands for it.
PLACEHOLDER = re.compile(r"<([^<>\s](?:[^<>\n]*[^<>\s])?)>")
PLACEHOLDER_TEXT = "PLACEHOLDER"
#: Placeholders that stand for a number where a parser other than argparse types the value.
PLACEHOLDER_VALUES = {"N": "2", "id": "1", "run-id": "1"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTIONS = {">", ">>", "<", "2>", "&>"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class CommandError(Exception):
    """A documented command that would not work (the message says why)."""


def substitute_placeholders(text: str) -> str:
    """``text`` with every ``<placeholder>`` replaced by a value of the right shape."""
    return PLACEHOLDER.sub(lambda m: PLACEHOLDER_VALUES.get(m.group(1), PLACEHOLDER_TEXT), text)


def simple_commands(text: str) -> list[list[str]]:
    """The words of each simple command in ``text`` (split at ``&&``, ``;``, ``|``; redirections, the
    ``VAR=value`` assignments before a program and lone ``...`` elisions dropped)."""
    lexer = shlex.shlex(substitute_placeholders(text), posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as error:  # an unclosed quote
        raise CommandError(f"the shell cannot split it: {error}") from None
    commands: list[list[str]] = [[]]
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
        elif token in SEPARATORS:
            commands.append([])
        elif token in REDIRECTIONS:
            skip_next = True  # the redirection's target
        elif token != "...":
            commands[-1].append(token)
    programs = []
    for words in commands:
        # A line of assignments alone stays as it is, and fails as an unknown shape: in a page it is more
        # likely bare Hydra overrides shown as a command than a shell variable.
        first = next((i for i, word in enumerate(words) if not ENV_ASSIGNMENT.match(word)), 0)
        if words:
            programs.append(words[first:])
    return programs


def program_name(word: str) -> str:
    """``python`` for any interpreter path (``.venv/bin/python``, ``python3.11``), else the basename."""
    name = word.rsplit("/", 1)[-1]
    return "python" if re.fullmatch(r"python(?:3(?:\.\d+)?)?", name) else name


# ------------------------------------------------------------------------------------------- checkers
@functools.cache
def compose(overrides: tuple[str, ...], config_name: str) -> DictConfig:
    """The entry point's composed config (cached: pages repeat commands, and a compose costs ~0.15 s)."""
    return compose_config(list(overrides), config_name)


def check_study(
    config_name: str, settings: type, ignored: dict[str, str], label: str
) -> Callable[[list[str]], None]:
    """The check of an entry point that runs ``refuse_unread_keys``, then ``typed_run`` (the centralized
    baseline and the studies)."""

    def check(overrides: list[str]) -> None:
        cfg = compose(tuple(overrides), config_name)
        refuse_unhonoured(cfg, compose(tuple(group_selections(overrides)), config_name), ignored, label)
        typed_run(cfg, settings, ignored)

    return check


def check_federated(overrides: list[str]) -> None:
    """What ``python -m lsc4rec.simulations.federated`` checks before it starts Flower."""
    from lsc4rec.server.components.registry import check_components

    cfg = compose(tuple(overrides), "federated_run")
    run = federated_settings(cfg, compose(tuple(group_selections(overrides)), "federated_run"))
    check_components(run)


def check_privacy_sweep(overrides: list[str]) -> None:
    """What ``python -m lsc4rec.simulations.privacy_sweep`` types before its first run: its ``sweep.*`` keys,
    the base federated run, and one setting of each kind (non-private, each mode's first ε; the others differ
    from it only by ε, and composing all of them would cost seconds per command)."""
    from lsc4rec.simulations.privacy_sweep import SweepSettings, settings_of

    cfg = compose(tuple(overrides), "privacy_sweep")
    sweep = typed_section(cfg.sweep, SweepSettings, "sweep")
    base = [
        "system=base",
        *sweep.setting,
        *[o for o in overrides if not o.startswith(("run_name=", "sweep."))],
    ]
    check_federated(base)
    seen: set[str] = set()
    for setting in settings_of(sweep):
        if setting["mode"] not in seen and not setting["name"].startswith("ablation"):
            seen.add(setting["mode"])
            check_federated([*base, *setting["overrides"]])


def check_pretrained_cloud(overrides: list[str]) -> None:
    """What ``python -m lsc4rec.simulations.pretrained_cloud`` checks (its config name is its constant)."""
    from lsc4rec.simulations.pretrained_cloud import CONFIG_NAME

    label = "the pretrained-cloud request curve"
    check_study(CONFIG_NAME, RequestCurveSettings, REQUEST_CURVE_IGNORES, label)(overrides)


FEDERATED = "lsc4rec.simulations.federated"
#: The Hydra entry points and how each types its config (the same helpers their ``main`` calls).
HYDRA_CHECKS: dict[str, Callable[[list[str]], None]] = {
    "lsc4rec.simulations.centralized": check_study(
        "config", CentralizedSettings, CENTRALIZED_IGNORES, "the centralized baseline"
    ),
    "lsc4rec.simulations.request_curve": check_study(
        "config", RequestCurveSettings, REQUEST_CURVE_IGNORES, "the request-curve experiment"
    ),
    "lsc4rec.simulations.pretrained_cloud": check_pretrained_cloud,
    "lsc4rec.simulations.solid": check_study(
        "solid_run", SolidStudySettings, SOLID_STUDY_IGNORES, "the SOLID study"
    ),
    "lsc4rec.simulations.mergenet": check_study(
        "mergenet_run", MergeNetStudySettings, MERGENET_STUDY_IGNORES, "the MergeNet study"
    ),
    FEDERATED: check_federated,
    "lsc4rec.simulations.privacy_sweep": check_privacy_sweep,
    # Not Hydra's main, but a federated run's overrides, typed as the run types them.
    "lsc4rec.simulations.prepare_text": check_federated,
}


def check_group_choices(overrides: Sequence[str]) -> None:
    """Each override that picks a config group's file (``model=gru4rec``) names a file of ``conf/<group>/``:
    the part of composing that needs no composing."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        group = override.key_or_group
        if "." in group or not (config_dir() / group).is_dir() or override.is_delete():
            continue
        value = override.value()
        if isinstance(value, str) and not (config_dir() / group / f"{value}.yaml").is_file():
            choices = sorted(f.stem for f in (config_dir() / group).glob("*.yaml"))
            raise ValueError(f"{group}={value}: no conf/{group}/{value}.yaml (choices: {choices})")


def check_overrides(module: str, overrides: list[str], config_name: str | None, *, full: bool) -> None:
    """One run's overrides: parsed and their group choices checked; with ``full``, also composed and typed
    as the entry point does (for a known entry point) or composed (for another Hydra entry point)."""
    check_group_choices(overrides)
    if not full:
        return
    if module in HYDRA_CHECKS:
        HYDRA_CHECKS[module](overrides)
    else:
        assert config_name is not None
        compose(tuple(overrides), config_name)


def check_hydra(module: str, args: list[str], config_name: str | None, *, full: bool) -> str:
    """The overrides of ``python -m module args`` (a Hydra entry point; ``-m`` expanded as Hydra's sweeper
    does): see :func:`check_overrides`."""
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    flags = [a for a in overrides if a.startswith("-")]
    if flags:
        raise CommandError(f"{module}: {flags[0]} is not a Hydra override or -m (not checked here)")
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        runs = BasicSweeper.split_arguments(parsed, None)[0] if multirun else [overrides]
        for run in runs:
            check_overrides(module, list(run), config_name, full=full)
    except Exception as error:  # Hydra's and the settings' errors alike: the message is the finding
        raise CommandError(f"python -m {module} {' '.join(args)}: {type(error).__name__}: {error}") from None
    return f"hydra {module}" + (f" ({len(runs)} runs)" if multirun else "")


class _Parsed(Exception):
    """Raised right after a program's ``parse_args`` succeeded: it stops the program before it does work."""


@contextlib.contextmanager
def stop_after_parse_args() -> Iterator[None]:
    """Make every ``ArgumentParser.parse_args`` raise :class:`_Parsed` once it has parsed."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise _Parsed(original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
        yield


def run_parser_only(main: Callable[[], Any], argv: list[str], label: str) -> None:
    """Call ``main`` with ``sys.argv = argv`` until its argparse parsed; raise :class:`CommandError` on a
    usage error (with argparse's message) or when ``main`` never parses its arguments."""
    stderr = io.StringIO()
    try:
        with (
            stop_after_parse_args(),
            mock.patch.object(sys, "argv", argv),
            contextlib.redirect_stderr(stderr),
        ):
            main()
    except _Parsed:
        return
    except SystemExit as error:
        raise CommandError(
            f"{label}: its argparse refused it: {stderr.getvalue().strip()} (exit {error.code})"
        ) from None
    raise CommandError(f"{label}: main() returned without parsing its arguments: not checked")


def check_argparse_module(module: ModuleType, argv: list[str], label: str) -> None:
    """Parse ``argv`` with ``module.main``'s own argparse; path types accept paths that do not exist."""
    lenient = {name: Path for name in ("existing_file", "existing_dir") if hasattr(module, name)}
    folder = str(Path(module.__file__ or ".").parent)
    convert = argparse.ArgumentParser._get_value

    def placeholder_fits(self: argparse.ArgumentParser, action: argparse.Action, text: str) -> Any:
        # A <placeholder> stands for a value of the right type, whatever the type (a count, a port, a path).
        return text if text == PLACEHOLDER_TEXT else convert(self, action, text)

    with contextlib.ExitStack() as stack:
        for name, replacement in lenient.items():
            stack.enter_context(mock.patch.object(module, name, replacement))
        stack.enter_context(mock.patch.object(argparse.ArgumentParser, "_get_value", placeholder_fits))
        stack.enter_context(mock.patch.object(sys, "path", [folder, *sys.path]))
        run_parser_only(module.main, argv, label)


def check_python_module(module_name: str, args: list[str], *, full: bool) -> str:
    """``python -m module_name args`` for this package's modules (with ``full``, a Hydra entry point is
    imported and its config composed)."""
    try:
        spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        raise CommandError(f"no module {module_name}")
    source = Path(spec.origin).read_text(encoding="utf-8")
    if module_name in HYDRA_CHECKS:
        if full:
            importlib.import_module(module_name)
        return check_hydra(module_name, args, None, full=full)
    if "@hydra.main(" in source:
        name = re.search(r"config_name=\"(\w+)\"", source)
        if name is None:
            raise CommandError(
                f"{module_name}: a Hydra entry point without a literal config_name: add it to "
                "HYDRA_CHECKS in tests/test_docs_commands.py"
            )
        return check_hydra(module_name, args, name.group(1), full=full)
    module = importlib.import_module(module_name)
    if "argparse" in source and hasattr(module, "main"):
        check_argparse_module(module, [module_name, *args], f"python -m {module_name}")
        return f"argparse {module_name}"
    raise CommandError(f"{module_name}: neither a Hydra nor an argparse entry point: no checker")


def check_script(path_word: str, args: list[str]) -> str:
    """``python deploy/X.py args`` / ``python benchmarks/X.py args``: exists, its argparse takes ``args``."""
    path = REPO / path_word
    if not path.is_file():
        raise CommandError(f"{path_word} does not exist")
    if path.parent.name not in ("deploy", "benchmarks"):
        raise CommandError(f"{path_word}: only deploy/ and benchmarks/ scripts are checked")
    check_argparse_module(load_script(path), [str(path), *args], f"python {path_word}")
    return f"argparse {path_word}"


def makefile_variables() -> set[str]:
    """The variables the Makefile lets a caller set (``NAME ?= ...``)."""
    return set(re.findall(r"^([A-Z_]+)\s*\?=", MAKEFILE.read_text(encoding="utf-8"), flags=re.MULTILINE))


def makefile_targets() -> set[str]:
    """The Makefile's named targets (not file targets such as ``$(STAMP)``)."""
    text = MAKEFILE.read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z0-9_.-]*)\s*:(?!=)", text, flags=re.MULTILINE))


def check_make(args: list[str], *, full: bool) -> str:
    """``make T [VAR=value]``: a declared target and variables; the ``python -m lsc4rec`` line ``make -n``
    prints is checked as a command, and ``ARGS`` must reach it."""
    assignments = dict(a.split("=", 1) for a in args if "=" in a)
    targets = [a for a in args if "=" not in a]
    if not targets or any(t.startswith("-") for t in targets):
        raise CommandError(f"make {' '.join(args)}: give one or more targets (flags are not checked)")
    missing = sorted(set(targets) - makefile_targets())
    if missing:
        raise CommandError(f"make: no target {missing[0]} in the Makefile")
    unknown = sorted(set(assignments) - makefile_variables())
    if unknown:
        raise CommandError(
            f"make: {unknown[0]}= is not a variable the Makefile reads ({sorted(makefile_variables())})"
        )
    if shutil.which("make") is None:
        return "make (targets only: no make here)"
    dry = subprocess.run(
        ["make", "-n", "-s", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=False
    )
    if dry.returncode != 0:
        raise CommandError(f"make -n {' '.join(args)} failed: {dry.stderr.strip()}")
    recipes = [line for line in dry.stdout.splitlines() if re.search(r"python -m lsc4rec\b", line)]
    if "ARGS" in assignments and assignments["ARGS"] and not any(assignments["ARGS"] in r for r in recipes):
        raise CommandError(
            f"make {' '.join(targets)} does not pass ARGS on: ARGS={assignments['ARGS']} is ignored"
        )
    for recipe in recipes:
        for words in simple_commands(recipe):
            check_words(words, full=full)
    return f"make {' '.join(targets)}" + (f" -> {len(recipes)} lsc4rec command(s)" if recipes else "")


def declared_run_config(app_dir: Path) -> dict[str, Any]:
    """The app's ``[tool.flwr.app.config]``, flattened to dotted keys as Flower does."""
    from flwr.common.config import flatten_dict, get_project_config

    return dict(flatten_dict(get_project_config(app_dir)["tool"]["flwr"]["app"].get("config", {})))


def check_run_config(values: Sequence[str], app_dir: Path = REPO, *, full: bool) -> None:
    """``--run-config`` values as Flower merges them (undeclared keys refused, its own error) and the
    resulting Hydra overrides of a federated run (:func:`check_overrides`)."""
    from flwr.common.config import fuse_dicts, parse_config_args

    if not (app_dir / "pyproject.toml").is_file():
        raise CommandError(f"flwr run: {app_dir} holds no pyproject.toml")
    try:
        given = parse_config_args([v for v in values if v])
        fused = fuse_dicts(declared_run_config(app_dir), given)
    except (ValueError, TypeError) as error:
        declared = sorted(declared_run_config(app_dir))
        raise CommandError(
            f"Flower refuses --run-config {' '.join(values)!r} ('Invalid run configuration'): {error}; the "
            f'app declares only {declared}, so any other key goes inside overrides="..."'
        ) from None
    try:
        check_overrides(FEDERATED, overrides_from_run_config(fused), None, full=full)
    except Exception as error:
        raise CommandError(f"--run-config {' '.join(values)!r}: {type(error).__name__}: {error}") from None


def check_click(group: click.Command, args: list[str], prog: str) -> click.Context:
    """Parse ``args`` with a click command tree (Flower's, Ray's CLI) down to its leaf command."""
    command, path = group, [prog]
    while isinstance(command, click.Group):
        if not args or args[0] not in command.commands:
            raise CommandError(f"{' '.join(path)}: no subcommand {args[0] if args else '(none)'}")
        path.append(args[0])
        command, args = command.commands[args[0]], args[1:]
    try:
        return command.make_context(" ".join(path), list(args))
    except click.exceptions.Exit:
        raise CommandError(f"{' '.join(path)} {' '.join(args)}: exits at once (--help?)") from None
    except click.ClickException as error:
        raise CommandError(f"{' '.join(path)} {' '.join(args)}: {error.format_message()}") from None


def check_flwr(args: list[str], *, full: bool) -> str:
    """``flwr ...`` parsed by Flower's CLI; ``flwr run``'s run config checked (:func:`check_run_config`)."""
    import typer
    from flwr.cli.app import app

    context = check_click(typer.main.get_command(app), args, "flwr")
    if args[0] == "run":
        run_config = list(context.params.get("run_config_overrides") or ())
        check_run_config(run_config, REPO / context.params["app"], full=full)
    return f"flwr {args[0]}"


def check_flower_server(program: str, args: list[str]) -> str:
    """``flower-superlink`` / ``flower-supernode`` flags parsed by Flower's own argparse."""
    if program == "flower-superlink":
        from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as parser
    else:
        from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as parser
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser().parse_args(args)
    except SystemExit:
        raise CommandError(f"{program}: {stderr.getvalue().strip()}") from None
    return program


#: ``deploy/*.sh`` wrappers: the ``deploy/*.py`` command each ``exec``s (its first two arguments are the
#: number of SuperNodes and the run config), and whether it passes further arguments on.
SHELL_WRAPPERS: dict[str, tuple[str, bool]] = {
    "deploy/local.sh": ("deploy/local.py", False),
    "deploy/secure.sh": ("deploy/secure.py", True),
}


def check_shell_script(word: str, args: list[str], *, full: bool) -> str:
    """``deploy/X.sh args``: exists and is executable; a known wrapper is checked as what it runs."""
    path = REPO / word.removeprefix("./")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise CommandError(f"{word} is not an executable file")
    key = str(path.relative_to(REPO))
    if key not in SHELL_WRAPPERS:
        return f"{key} exists"
    script, passes_rest = SHELL_WRAPPERS[key]
    if len(args) > 2 and not passes_rest:
        raise CommandError(f"{key} reads only its first two arguments; {args[2:]} would be ignored")
    run_config = args[1] if len(args) > 1 else ""
    check_run_config([run_config], full=full)
    check_script(script, ["--supernodes", args[0] if args else "2", "--run-config", run_config, *args[2:]])
    return f"{key} -> {script}"


#: Shapes recognized without a check, and why: not this project's commands.
RECOGNIZED_ONLY: dict[str, str] = {
    "pip": "package installation (pip's own syntax)",
    "uv": "package installation on a device (uv's own syntax)",
    "source": "activates the virtual environment",
    "export": "sets an environment variable",
    "cd": "changes directory",
    "git": "git's own commands",
    "pkill": "stops a process left running",
    "echo": "writes a line to a file",
    "tensorboard": "TensorBoard's own viewer",
    "ssh-keygen": "key generation on a device",
    "scp": "copies files to a device",
    "chmod": "file permissions on a device",
    "sudo": "system administration on a device (systemd, power modes)",
    "journalctl": "reads a systemd service's log",
}


def check_words(words: list[str], *, full: bool) -> str:
    """Check one simple command (its words); return what was checked, raise :class:`CommandError`. Without
    ``full`` Hydra overrides are parsed and their group choices checked, not composed (composing every
    documented command takes about a minute: the slow tier does it)."""
    program, args = program_name(words[0]), words[1:]
    if program == "python":
        if args[:1] == ["-m"] and len(args) > 1:
            if args[1] == "pip":
                return "recognized: pip"
            if args[1].split(".")[0] == "lsc4rec":
                return check_python_module(args[1], args[2:], full=full)
        elif args[:1] == ["-c"] and len(args) > 1:
            try:
                compile(args[1], "<python -c>", "exec")
            except SyntaxError as error:
                raise CommandError(f"python -c: {error}") from None
            return "python -c (compiles)"
        elif args and args[0].endswith(".py"):
            return check_script(args[0], args[1:])
        raise CommandError(f"unknown command shape: {' '.join(words)}")
    if program == "make":
        return check_make(args, full=full)
    if program == "flwr":
        return check_flwr(args, full=full)
    if program in ("flower-superlink", "flower-supernode"):
        return check_flower_server(program, args)
    if program == "ray":
        from ray.scripts.scripts import cli

        check_click(cli, args, "ray")
        return f"ray {args[0]}"
    if program == "bash" and args and args[0].endswith(".sh"):
        if not (REPO / args[0]).is_file():
            raise CommandError(f"{args[0]} does not exist")
        return f"bash {args[0]} (exists)"
    if words[0].endswith(".sh"):
        return check_shell_script(words[0], args, full=full)
    if program in RECOGNIZED_ONLY:
        return f"recognized: {program}"
    raise CommandError(
        f"unknown command shape: {' '.join(words)} (add a checker, or the program to RECOGNIZED_ONLY in "
        "tests/test_docs_commands.py)"
    )


def check_command(command: DocCommand, *, full: bool = False) -> list[str]:
    """Check every simple command of ``command`` (:func:`check_words`); a failure names the page and line."""
    folder = page_files_folder(command.source)
    try:
        with mock.patch.object(sys, "path", [str(folder), *sys.path] if folder else sys.path):
            return [check_words(words, full=full) for words in simple_commands(command.text)]
    except CommandError as error:
        raise CommandError(f"{command.where}: `{command.text}`: {error}") from None


@pytest.fixture(scope="module", autouse=True)
def _hydra() -> Iterator[None]:
    """One Hydra initialization for the module (composing inside it is several times faster)."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        yield
    compose.cache_clear()


COMMANDS = all_commands()


# ----------------------------------------------------------------------------------------- fast tier
#: Commands a page shows in order to show the error they stop with: each must still stop with it.
DOCUMENTED_REFUSALS = {
    "python -m lsc4rec.simulations.centralized federated.rounds=3": "the centralized baseline cannot honour: "
    "federated.rounds=3 (only federated runs",
}


def expect_documented_outcome(command: DocCommand, *, full: bool) -> None:
    """``command`` passes its check, or, when it is a documented refusal, fails with the documented message
    (a refusal shows only once the config is typed: parse-level checks pass it)."""
    failure = ""
    try:
        check_command(command, full=full)
    except CommandError as error:
        failure = str(error)
    if command.text in DOCUMENTED_REFUSALS and full:
        assert DOCUMENTED_REFUSALS[command.text] in failure, (
            f"{command.where}: no longer refused as documented"
        )
    elif failure:
        pytest.fail(failure, pytrace=False)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_parses(command: DocCommand) -> None:
    """Every documented command is a known shape whose arguments parse (Hydra overrides and their group
    choices, Makefile targets, Flower's run config keys, argparse flags)."""
    expect_documented_outcome(command, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_composes(command: DocCommand) -> None:
    """Every documented command's config composes and types as its entry point does before it starts
    (unknown keys, wrong values, keys the entry point cannot honour and refused combinations fail)."""
    expect_documented_outcome(command, full=True)


def test_collection_finds_the_pages_commands() -> None:
    """The collector sees every fenced shell block's commands and the inline ones (a collector that found
    nothing would pass every check above)."""
    pages = {c.source.relative_to(REPO).as_posix() for c in COMMANDS}
    for page in ("README.md", "docs/getting_started.md", "docs/federated.md", "deploy/JETSON.md"):
        assert page in pages
    assert sum(not c.inline for c in COMMANDS) >= 80
    assert sum(c.inline for c in COMMANDS) >= 60
    texts = {c.text for c in COMMANDS}
    # A continuation joined, a comment stripped, an inline span wrapped over two lines joined.
    assert "deploy/secure.sh 2 'overrides=\"federated.rounds=2\"' --auth-drill" in texts, (
        "comment not stripped"
    )
    assert any(
        t.startswith(".venv/bin/flower-superlink --ssl-ca-certfile") and t.endswith("superlink.db")
        for t in texts
    )
    assert "make run ARGS=system=sasrec" in texts


def test_the_documented_short_flower_run_is_the_plain_federated_one() -> None:
    """The 1-round `flwr run` the federated page times (about a minute) is `system="base"`, and the whole
    system refuses a 1-round run (it would train the cloud LLM and the warm start first)."""
    short = [c for c in COMMANDS if c.text.startswith("flwr run") and "federated.rounds=1 " in c.text]
    assert short and all('system="base"' in c.text for c in short)
    with pytest.raises(CommandError, match="replay_closing_round"):
        check_run_config(['overrides="federated.rounds=1"'], full=True)


BROKEN_PAGE = """# A page with broken commands

```bash
.venv/bin/python -m lsc4rec.simulations.centralized model=gru4rec   # fine
frobnicate --all                                                     # an unknown shape
seed=1 model=gru4rec                                                 # overrides without their command
make no-such-target
make centralized ARGS=model=gru4rec
.venv/bin/python -m lsc4rec.simulations.centralized federated.rounds=3
.venv/bin/python -m lsc4rec.simulations.centralized model=no_such_model
.venv/bin/python -m lsc4rec.simulations.centralized dataset=beauty [model.ttt.layer=linear]
.venv/bin/python -m lsc4rec.no_such_module
flwr run . --stream --run-config 'federated.rounds=1 federated.users_per_node=50'
flwr run . --run-config 'overrides="federated.rounds=1"'
python deploy/drills.py supernode-crash --no-such-flag
deploy/local.sh 2 'overrides="federated.rounds=2"' --extra
```

Inline, fine: `python -m lsc4rec.compare outputs/a outputs/b`;
refused, wrapped over two lines: `make run
ARGS=train.epochs=3`.
"""

#: Line of each command of :data:`BROKEN_PAGE` -> what its failure says ("" for the commands that pass);
#: :data:`COMPOSE_ONLY` the lines whose fault shows only once the config is composed and typed.
BROKEN_PAGE_OUTCOMES = {
    4: "",
    5: "unknown command shape: frobnicate --all",
    6: "unknown command shape: seed=1 model=gru4rec",
    7: "no target no-such-target",
    8: "ARGS=model=gru4rec is ignored",
    9: "the centralized baseline cannot honour: federated.rounds=3",
    10: "no_such_model",
    11: "OverrideParseException",
    12: "no module lsc4rec.no_such_module",
    13: "Invalid run configuration",
    14: "replay_closing_round",
    15: "unrecognized arguments: --no-such-flag",
    16: "reads only its first two arguments",
    19: "",
    20: "a federated run cannot honour: train.epochs=3",
}
COMPOSE_ONLY = {9, 14, 20}


@pytest.mark.parametrize("full", [False, True], ids=["parse", "compose"])
def test_broken_commands_fail_naming_file_and_line(tmp_path: Path, full: bool) -> None:
    """A checker that cannot fail proves nothing: each broken command of a page fails, naming its line
    (those of :data:`COMPOSE_ONLY` once composed)."""
    page = tmp_path / "broken.md"
    page.write_text(BROKEN_PAGE, encoding="utf-8")
    commands = collect_commands(page)
    assert [c.line for c in commands] == sorted(BROKEN_PAGE_OUTCOMES)
    assert commands[-1].text == "make run ARGS=train.epochs=3"
    for command in commands:
        expected = BROKEN_PAGE_OUTCOMES[command.line]
        if not expected or (command.line in COMPOSE_ONLY and not full):
            check_command(command, full=full)
            continue
        with pytest.raises(CommandError) as failure:
            check_command(command, full=full)
        assert str(failure.value).startswith(f"{page}:{command.line}: `{command.text}`: ")
        assert expected in str(failure.value)


# ----------------------------------------------------------------------------------------- slow tier
#: The documented commands the slow tier runs, by their text, with how (see the module docstring for the
#: parse-only ones and why).
RUN_IN_SLOW_TIER: dict[str, str] = {
    ".venv/bin/python -m lsc4rec.compare outputs/whole-v4 outputs/close-A outputs/whole-v6": "compare",
    ".venv/bin/python -m lsc4rec.compare outputs/c-sasrec-text outputs/whole-v6 --plot "
    "outputs/sasrec-vs-whole.png": "compare",
    ".venv/bin/python deploy/credentials.py --out deploy/credentials --supernodes 2 --host cloud.lan": "cwd",
    ".venv/bin/python deploy/credentials.py --out deploy/credentials --supernodes 2 --host cloud.lan "
    "--host 192.168.1.10": "cwd",
    ".venv/bin/python deploy/credentials.py --out deploy/credentials --supernodes 0 --host cloud.lan": "cwd",
    'python -c "import torch, flwr, onnxruntime; print(torch.__version__, flwr.__version__, '
    'onnxruntime.get_device())"': "cwd",
    'python -c "import torch; print(torch.__version__, torch.cuda.is_available())"': "cwd",
}


def write_run_folder(folder: Path, kind: str, ndcg: float) -> None:
    """A minimal finished run's ``metrics.json`` (federated: rounds; centralized: epochs)."""
    scores = {"NDCG@10": ndcg, "HR@10": 2 * ndcg}
    payload: dict[str, Any] = {
        "status": "completed",
        "config": {"run_name": folder.name, "seed": 42, "federated": {"rounds": 2}, "train": {"lr": ndcg}},
        "final": {"test": {"full": scores}},
        "wall_seconds": 60.0,
    }
    if kind == "federated":
        payload["rounds"] = [{"round": r, "server_valid": scores} for r in (1, 2)]
    else:
        payload["epochs"] = [{"epoch": e, "train_loss": 1.0, "valid": {"full": scores}} for e in (1, 2)]
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(payload), encoding="utf-8")


def test_the_run_list_names_documented_commands() -> None:
    """Every command the slow tier runs is still shown by a page, so a changed page is not run stale."""
    assert set(RUN_IN_SLOW_TIER) <= {c.text for c in COMMANDS}


def where_shown(text: str) -> str:
    """``file:line`` of the first page showing the command ``text`` (a test id)."""
    return next((c.where for c in COMMANDS if c.text == text), text[:60])


@pytest.mark.slow
@pytest.mark.parametrize(
    "text", sorted(RUN_IN_SLOW_TIER), ids=[where_shown(t) for t in sorted(RUN_IN_SLOW_TIER)]
)
def test_short_documented_commands_run(text: str, tmp_path: Path) -> None:
    """The short documented commands run as shown (in a temporary folder: the run folders they read are
    written there, and what they write stays there)."""
    (words,) = simple_commands(text)
    if RUN_IN_SLOW_TIER[text] == "compare":
        for index, name in enumerate(
            a for a in words[3:] if a.startswith("outputs/") and not a.endswith(".png")
        ):
            write_run_folder(
                tmp_path / name, "centralized" if "c-" in name else "federated", 0.03 + index / 100
            )
    argv = [sys.executable, *[str(REPO / w) if w.endswith(".py") and "/" in w else w for w in words[1:]]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    if RUN_IN_SLOW_TIER[text] == "compare":
        assert "RESULT " in done.stdout
        plot = words[words.index("--plot") + 1] if "--plot" in words else "outputs/compare.png"
        assert (tmp_path / plot).is_file()
    if "credentials.py" in text:
        assert (tmp_path / "deploy/credentials/manifest.json").is_file()
