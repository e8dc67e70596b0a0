"""Launch the Flower app with ``flwr run`` on a simulation SuperLink this process owns, and report honestly.

``flwr run --stream`` exits 0 even when the run fails, and the managed ``:local:`` SuperLink outlives the
command. So this starts its own ``flower-superlink --simulation`` (known PID, private ``FLWR_HOME``, runtime
dependency installation off), submits the run, waits for it under a timeout, reads the run's status with
``flwr ls --format json`` and stops everything it started.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

QUIET_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}


@dataclass
class FlowerRun:
    """Outcome of one ``flwr run``: its id, final status and combined log."""

    run_id: int | None
    status: str
    log: str

    @property
    def ok(self) -> bool:
        """True when the SuperLink reports the run as completed."""
        return self.status == "finished:completed"


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_executable(name: str) -> str:
    """Path of a Flower executable: this interpreter's environment (the venv) first, then PATH."""
    candidate = Path(sys.executable).with_name(name)
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; is flwr installed?")
    return found


def run_config_string(values: Mapping[str, object]) -> str:
    """Render a run config for ``--run-config`` (TOML values: strings quoted, booleans lower-case)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = str(value).lower()
        elif isinstance(value, int | float):
            rendered = repr(value)
        else:
            rendered = json.dumps(str(value))
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Block until something listens on ``port``; fail with the log tail if the process dies first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{log.stem} did not listen on port {port} within {seconds:.0f} s (log: {log})")


@contextmanager
def simulation_superlink(flwr_home: Path, env: dict[str, str]) -> Iterator[str]:
    """Run a private simulation SuperLink; yield the connection name configured for it in ``flwr_home``."""
    port = free_port()
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "lsc4rec"\n\n'
        f'[superlink.lsc4rec]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    log_path = flwr_home / "superlink.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [
                flower_executable("flower-superlink"),
                "--insecure",
                "--simulation",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with _terminate_as_exit():
            wait_for_port(port, process, log_path)
            yield "lsc4rec"
    finally:
        with _signals_held():
            # Listed before anything dies (an orphan is re-parented and lost): the simulation process and Ray
            # leave the SuperLink's process group, so stopping the group alone would leave them running.
            family = descendants(process.pid)
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            stop_processes(family)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block ends (main thread only): a second kill or Ctrl-C during the
    cleanup would otherwise end the process before the simulation and Ray are stopped, leaving them running.
    A signal that arrived meanwhile is delivered when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit inside the block (main thread only), so cleanup in ``finally`` runs: by
    default Python dies on SIGTERM without unwinding, leaving a SuperLink and its simulation behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def descendants(root: int) -> list[int]:
    """Pids of every living descendant of ``root`` (children first), read from ``/proc`` (Linux; [] else)."""
    children: dict[int, list[int]] = {}
    with suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # exited while listing
            # The command name may hold spaces and parentheses; the parent pid follows the last ")".
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop(0)
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def stop_processes(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM every pid still alive, then SIGKILL those still alive after ``grace`` seconds."""
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        if alive:
            time.sleep(0.2)
    for pid in alive:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: private ``FLWR_HOME``, no phoning home, no runtime installs."""
    env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(flwr_home)}
    # SuperLink and SuperNodes start further Flower executables (flower-superexec, flwr-clientapp) by name.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


#: Lines of the streamed run log shown live: records of this package's loggers (``INFO lsc4rec.server.loop:
#: round 1/5 ...``). Its RESULT line stays in the log: the launcher prints the run's one RESULT line itself.
PROGRESS_PATTERN = re.compile(r"\blsc4rec(?:\.[a-z_]+)+: ")


def is_progress_line(line: str) -> bool:
    """True for a line of the run's log worth showing live (see :data:`PROGRESS_PATTERN`)."""
    return bool(PROGRESS_PATTERN.search(line)) and not line.startswith("RESULT")


def stream_command(
    command: list[str], env: dict[str, str], timeout: float, show: Callable[[str], bool]
) -> tuple[bool, str]:
    """Run ``command``, echoing to stderr, as they arrive, the output lines ``show`` accepts; return
    ``(finished in time, the whole output)``. Past ``timeout`` seconds the command is killed."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    lines: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if show(line):
                sys.stderr.write(line)
                sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        reader.join(timeout=5)
        return False, "".join(lines)
    reader.join(timeout=5)
    return True, "".join(lines)


def submit_and_wait(
    app_dir: Path, connection: str, env: dict[str, str], timeout: float, extra_args: list[str]
) -> FlowerRun:
    """``flwr run --stream`` the app on ``connection`` (its round lines shown live), then read its final
    status from the SuperLink."""
    command = [flower_executable("flwr"), "run", str(app_dir), connection, "--stream", *extra_args]
    logger.info("launching: %s", " ".join(command))
    finished, output = stream_command(command, env, timeout, is_progress_line)
    if not finished:
        return FlowerRun(None, f"timed out after {timeout:.0f} s", output)
    return read_run_status(output, connection, env)


def read_run_status(output: str, connection: str, env: dict[str, str]) -> FlowerRun:
    """The final status of the run whose ``flwr run`` printed ``output``, as the SuperLink reports it."""
    match = re.search(r"run[ _-]?(?:id)?\D{0,3}(\d{3,})", output, flags=re.IGNORECASE)
    if match is None:
        return FlowerRun(None, "unknown (no run id in the flwr run output)", output)
    run_id = int(match.group(1))
    listing = subprocess.run(
        [flower_executable("flwr"), "ls", connection, "--run-id", str(run_id), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        status = str(json.loads(listing.stdout)["runs"][0]["status"])
    except (json.JSONDecodeError, KeyError, IndexError):
        status = f"unreadable status: {listing.stdout[-500:]} {listing.stderr[-500:]}"
    return FlowerRun(run_id, status, output)


def flwr_run(
    app_dir: Path,
    run_config: Mapping[str, object],
    num_supernodes: int,
    timeout: float,
    flwr_home: Path | None = None,
    ray_address: str | None = None,
) -> FlowerRun:
    """``flwr run`` the app in ``app_dir`` on a private simulation SuperLink; return its final status.

    ``ray_address`` (``host:port``) makes the simulation join that running Ray cluster (Flower's Ray backend
    calls ``ray.init()``, which connects to ``RAY_ADDRESS``) instead of starting Ray on this machine.
    """
    home = flwr_home or Path(tempfile.mkdtemp(prefix="lsc4rec-flwr-"))
    env = flower_env(home)
    # Only the key decides where Ray runs: without it, ray.init() would join a RAY_ADDRESS left in the shell
    # or any cluster `ray start` recorded on this machine; "local" makes it start its own.
    env["RAY_ADDRESS"] = ray_address or "local"
    with simulation_superlink(home, env) as connection:
        return submit_and_wait(
            app_dir,
            connection,
            env,
            timeout,
            [
                "--run-config",
                run_config_string(run_config),
                "--federation-config",
                f"num-supernodes={num_supernodes} client-resources-num-cpus=1",
            ],
        )
