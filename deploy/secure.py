"""Secure deployment: a TLS SuperLink with SuperNode authentication and N registered SuperNodes.

    python deploy/credentials.py --out deploy/credentials --supernodes 2      # once
    python deploy/secure.py --credentials deploy/credentials --supernodes 2 \\
        --run-config 'overrides="federated.rounds=2"'

What it does, with the exact Flower 1.42 commands (every one is logged to ``--workdir``):

1. ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile superlink.crt --ssl-keyfile superlink.key
   --enable-supernode-auth --disable-runtime-dependency-installation``: every API (Fleet, Control, Runtime)
   over HTTPS, and only SuperNodes whose public key was registered may connect.
2. ``flwr supernode register supernodes/supernode-<i>.pub <connection>`` for each SuperNode, through a
   ``$FLWR_HOME/config.toml`` connection whose ``root-certificates`` is the CA certificate.
3. ``flower-supernode --root-certificates ca.crt --auth-supernode-private-key supernodes/supernode-<i>
   --node-config "partition-id=<i> num-partitions=<N>"``, then waits until ``flwr supernode list`` shows every
   registered SuperNode online.
4. ``flwr run`` the app, waits for its final status (``flwr ls``), stops everything it started (also on
   Ctrl-C, SIGTERM or error) and prints a final ``RESULT {json}`` line. Exit status 0 only when the run
   completed (and, with ``--auth-drill``, the unregistered SuperNodes were refused).

Options:

- ``--auth-drill``: before the run, also start two SuperNodes that were never registered: one with a fresh
  key pair, one without a key (it asks the SuperLink to register it, which ``--enable-supernode-auth``
  forbids). Both must be refused (their processes exit, they never show up in ``flwr supernode list``) while
  the registered ones run the app; the result's ``auth_drill.refused`` says whether they were.
- ``--candidate-llm DIR``: also serve a saved cloud LLM (``CloudLLM.save_pretrained`` folder, e.g.
  ``outputs/<run>/llm``) as the gRPC candidate service over TLS (``candidate-service.crt/.key``) with token
  authentication, for devices and phones outside the Flower app (``deploy/phone_client.py``). The token is
  read from ``--candidate-token-file`` or, if that file does not exist, generated and written there (mode
  0600). A ``CANDIDATE-SERVICE {json}`` line says where it listens.
- ``--hold``: after the run, keep everything up (``flwr ls``, ``flwr supernode list`` and the candidate
  service keep working; a ``HOLD {json}`` line gives ``FLWR_HOME`` and the connection name) until Enter is
  pressed or stdin is closed.
- ``--candidate-only``: serve only the candidate service (with ``--candidate-llm``), no Flower deployment,
  until Ctrl-C or SIGTERM: the long-lived service phones talk to.
- ``--host 0.0.0.0 --port 8000``: where the SuperLink listens (default loopback, any free port). Remote
  devices must reach it under a name in ``superlink.crt`` (``deploy/credentials.py --host``).

Run it as a script (``python deploy/secure.py`` or ``deploy/secure.sh``): it imports its neighbours
``local.py`` and ``credentials.py`` from this folder.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credentials import make_supernode_key, manifest_files, read_manifest, write_private, write_public
from local import REPO, SUPERNODE_MALLOC_ARENAS, start

from lsc4rec.argument_types import existing_dir, host_port, port, positive_float, positive_int
from lsc4rec.simulations.launch.flower import (
    flower_env,
    flower_executable,
    free_port,
    submit_and_wait,
    wait_for_port,
)

CONNECTION = "secure-deployment"
#: Seconds an unregistered SuperNode gets to be refused (it exits within seconds when auth works).
REFUSAL_TIMEOUT = 60.0
#: Seconds between the standalone candidate service's lines of call counts and latencies.
METRICS_EVERY_S = 60.0


@dataclass(frozen=True)
class Credentials:
    """Absolute paths of the files ``deploy/credentials.py`` wrote that a deployment uses."""

    folder: Path
    ca_certificate: Path
    superlink_certificate: Path
    superlink_key: Path
    candidate_certificate: Path
    candidate_key: Path
    supernode_keys: list[tuple[Path, Path]]  # (private OpenSSH key, public OpenSSH key) per SuperNode

    @classmethod
    def load(cls, folder: Path, supernodes: int) -> Credentials:
        """Read ``folder``'s manifest; errors name a missing folder/file or too few SuperNode keys."""
        folder = folder.expanduser().resolve()
        manifest = read_manifest(folder) if folder.is_dir() else None
        if manifest is None:
            raise SystemExit(
                f"secure.py: error: {folder} holds no credentials (no manifest.json); make them with "
                f"python deploy/credentials.py --out {folder} --supernodes {max(supernodes, 1)}"
            )
        missing = [name for name in manifest_files(manifest) if not (folder / name).is_file()]
        if missing:
            raise SystemExit(f"secure.py: error: {folder} is incomplete, missing: {', '.join(missing)}")
        pairs = [
            (folder / pair["private_key"], folder / pair["public_key"]) for pair in manifest["supernode_keys"]
        ]
        if len(pairs) < supernodes:
            raise SystemExit(
                f"secure.py: error: --supernodes {supernodes} but {folder} holds only {len(pairs)} SuperNode "
                f"key pairs; regenerate with deploy/credentials.py --supernodes {supernodes} --force"
            )
        servers = manifest["servers"]
        return cls(
            folder=folder,
            ca_certificate=folder / manifest["ca"]["certificate"],
            superlink_certificate=folder / servers["superlink"]["certificate"],
            superlink_key=folder / servers["superlink"]["key"],
            candidate_certificate=folder / servers["candidate-service"]["certificate"],
            candidate_key=folder / servers["candidate-service"]["key"],
            supernode_keys=pairs[:supernodes],
        )


def flwr_json(args: list[str], env: dict[str, str], what: str, timeout: float = 60) -> dict[str, Any]:
    """Run ``flwr <args> --format json``; return its JSON. RuntimeError with Flower's output on failure."""
    command = [flower_executable("flwr"), *args, "--format", "json"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    text = proc.stdout
    try:
        # Flower prints only the JSON document in json mode; slicing from the first brace is belt and braces.
        payload = json.loads(text[text.index("{") :])
    except ValueError:
        payload = None
    if proc.returncode != 0 or not isinstance(payload, dict) or payload.get("success") is False:
        output = text[-2000:] + proc.stderr[-2000:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(command)}\n{output}")
    return payload


def register(public_key: Path, name: str, env: dict[str, str]) -> str:
    """``flwr supernode register`` one public key; returns the node id the SuperLink assigned."""
    payload = flwr_json(
        ["supernode", "register", str(public_key), CONNECTION, "--name", name],
        env,
        f"registering {public_key}",
    )
    return str(payload["node-id"])


def list_nodes(env: dict[str, str]) -> list[dict[str, str]]:
    """``flwr supernode list``: every SuperNode the SuperLink knows, as ``{"node-id", "status"}``."""
    payload = flwr_json(["supernode", "list", CONNECTION], env, "listing SuperNodes")
    return [{"node-id": str(node["node-id"]), "status": str(node["status"])} for node in payload["nodes"]]


def wait_online(node_ids: list[str], env: dict[str, str], timeout: float) -> list[dict[str, str]]:
    """Poll ``flwr supernode list`` until every node in ``node_ids`` is online; return the last listing."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list_nodes(env)
        online = {node["node-id"] for node in nodes if node["status"] == "online"}
        if set(node_ids) <= online:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"SuperNodes not online after {timeout:.0f} s: {nodes} (expected {node_ids})")
        time.sleep(1.0)


def write_connection(home: Path, port: int, ca_certificate: Path) -> None:
    """``$FLWR_HOME/config.toml`` with one TLS connection: the CLI verifies the SuperLink with the CA."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\n'
        f"root-certificates = {json.dumps(str(ca_certificate))}\n"
    )


def candidate_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace ignored), or a new one written there with mode 0600."""
    if path.is_file():
        token = path.read_text().strip()
        if not token:
            raise SystemExit(f"secure.py: error: --candidate-token-file {path} is empty")
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    write_private(path, (token + "\n").encode())
    return token


def start_candidate_service(
    args: argparse.Namespace, creds: Credentials, stack: ExitStack
) -> tuple[dict[str, Any], Any]:
    """Serve the saved LLM over TLS with token auth until ``stack`` closes, as a federated run's ServerApp
    does (ONNX Runtime where the LLM allows it, micro-batching); return where it listens, and the service."""
    # Imported here: torch and transformers are needed only when a candidate service is asked for.
    from lsc4rec.models.llm.recommender import load_candidate_source
    from lsc4rec.server.components.cloud_llm import serving_source
    from lsc4rec.serving import TLSConfig, serve

    token_file = args.candidate_token_file.expanduser().resolve()
    token = candidate_token(token_file)
    llm = load_candidate_source(args.candidate_llm, device=args.candidate_device)
    version = f"llm:{Path(args.candidate_llm).name}"
    source, runtime = serving_source(llm, "auto", version)
    service = serve(
        source,
        args.candidate_address,
        token=token,
        tls=TLSConfig(creds.candidate_certificate, creds.candidate_key),
        model_version=version,
        batch_delay=0.0,
    )
    stack.callback(service.stop, 1.0)
    info = {
        "target": service.target,
        "tls": True,
        "root_certificates": str(creds.ca_certificate),
        "token_file": str(token_file),
        "num_items": service.servicer.num_items,
        "max_history": service.servicer.max_history,
        "runtime": runtime,
    }
    return info, service


class UnregisteredSuperNode:
    """A SuperNode the SuperLink must refuse: one with a fresh, never registered key pair (``with_key``), or
    one without a key, which asks the SuperLink to register it (what ``--enable-supernode-auth`` forbids)."""

    def __init__(
        self,
        name: str,
        with_key: bool,
        workdir: Path,
        port: int,
        ca_certificate: Path,
        env: dict[str, str],
        stack: ExitStack,
    ) -> None:
        """Start it (its log: ``workdir/supernode-<name>.log``); it is stopped when ``stack`` closes."""
        command = [
            flower_executable("flower-supernode"),
            "--root-certificates",
            str(ca_certificate),
            "--superlink",
            f"127.0.0.1:{port}",
            "--port",
            str(free_port()),
            "--node-config",
            "partition-id=0 num-partitions=1",
        ]
        self.public_key: str | None = None
        if with_key:
            private, public = make_supernode_key()
            key = workdir / f"{name}.key"
            for path in (key, key.with_suffix(".pub")):
                path.unlink(missing_ok=True)
            write_private(key, private)
            write_public(key.with_suffix(".pub"), public)
            self.public_key = public.decode().strip()
            command += ["--auth-supernode-private-key", str(key)]
        self.log = workdir / f"supernode-{name}.log"
        self.started = time.monotonic()
        self.process = start(command, self.log, env, stack)

    def outcome(self) -> dict[str, Any]:
        """Wait (up to REFUSAL_TIMEOUT from its start) for the SuperNode to exit; report how it ended."""
        remaining = max(REFUSAL_TIMEOUT - (time.monotonic() - self.started), 0.1)
        try:
            exit_code: int | None = self.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            exit_code = None  # still running: the SuperLink let it in
        return {
            "exit_code": exit_code,
            "seconds": round(time.monotonic() - self.started, 1),
            "public_key": self.public_key,
            "log": str(self.log),
        }


def terminate_all(processes: list[subprocess.Popen]) -> None:
    """Send SIGTERM to the process group of every process still running (each was started in its own)."""
    for process in processes:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)


def deploy(args: argparse.Namespace) -> dict[str, Any]:
    """Run the app on a fresh secure deployment; return the ``RESULT`` dictionary."""
    creds = Credentials.load(args.credentials, args.supernodes)
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "flwr-home"
    port = args.port or free_port()
    write_connection(home, port, creds.ca_certificate)
    env = flower_env(home)
    result: dict[str, Any] = {"supernodes": args.supernodes, "workdir": str(workdir)}
    with ExitStack() as stack:
        superlink = start(
            [
                flower_executable("flower-superlink"),
                "--ssl-ca-certfile",
                str(creds.ca_certificate),
                "--ssl-certfile",
                str(creds.superlink_certificate),
                "--ssl-keyfile",
                str(creds.superlink_key),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                args.host,
                "--port",
                str(port),
                "--database",
                str(workdir / "state.db"),
            ],
            workdir / "superlink.log",
            env,
            stack,
        )
        if args.candidate_llm is not None:
            # Loaded while the SuperLink starts up (both take seconds).
            result["candidate_service"], _ = start_candidate_service(args, creds, stack)
            print("CANDIDATE-SERVICE " + json.dumps(result["candidate_service"]), flush=True)
        wait_for_port(port, superlink, workdir / "superlink.log")
        # Registration and start-up in parallel: each flwr / flower-supernode start costs seconds of imports.
        with ThreadPoolExecutor(max_workers=4) as pool:
            registering = [
                pool.submit(register, public, f"supernode-{index}", env)
                for index, (_, public) in enumerate(creds.supernode_keys)
            ]
            node_ids = [future.result() for future in registering]
        result["node_ids"] = node_ids
        nodes = []
        for index, (private, _) in enumerate(creds.supernode_keys):
            log = workdir / f"supernode-{index}.log"
            node_port = free_port()
            command = [
                flower_executable("flower-supernode"),
                "--root-certificates",
                str(creds.ca_certificate),
                "--superlink",
                f"127.0.0.1:{port}",
                "--auth-supernode-private-key",
                str(private),
                "--port",
                str(node_port),
                "--node-config",
                f"partition-id={index} num-partitions={args.supernodes}",
            ]
            node_env = {"MALLOC_ARENA_MAX": SUPERNODE_MALLOC_ARENAS, **env}
            nodes.append((start(command, log, node_env, stack), node_port, log))
        # Flower 1.42: a SuperNode with a key only activates that key (refused unless registered, whatever the
        # SuperLink's flags); one without a key self-registers, which only --enable-supernode-auth refuses.
        intruders = (
            {
                name: UnregisteredSuperNode(name, with_key, workdir, port, creds.ca_certificate, env, stack)
                for name, with_key in (("unregistered-key", True), ("no-key", False))
            }
            if args.auth_drill
            else {}
        )
        # Runs first on the way out: SIGTERM every SuperNode at once, so their graceful shutdowns overlap
        # instead of queueing one after another in the per-process stop callbacks.
        started_nodes = [node for node, _, _ in nodes] + [node.process for node in intruders.values()]
        stack.callback(terminate_all, started_nodes)
        for node, node_port, log in nodes:
            wait_for_port(node_port, node, log)
        wait_online(node_ids, env, timeout=120)
        if intruders:
            # Decided before the run starts, so a SuperNode let in by mistake would also be sampled by it.
            result["auth_drill"] = {"supernodes": {name: node.outcome() for name, node in intruders.items()}}
        started = time.perf_counter()
        extra = ["--run-config", args.run_config] if args.run_config else []
        run = submit_and_wait(REPO, CONNECTION, env, args.timeout, extra)
        (workdir / "flwr-run.log").write_text(run.log)
        result.update(run_id=run.run_id, status=run.status, seconds=round(time.perf_counter() - started, 1))
        # Who the SuperLink knows after the run: the registered nodes only, whatever else tried to join.
        result["nodes"] = list_nodes(env)
        if "auth_drill" in result:
            drill = result["auth_drill"]
            exited = all(node["exit_code"] not in (None, 0) for node in drill["supernodes"].values())
            listed = {node["node-id"] for node in result["nodes"]}
            drill["refused"] = exited and listed == set(node_ids)
        if args.hold:
            hold = {"flwr_home": str(home), "connection": CONNECTION, "status": run.status}
            print("HOLD " + json.dumps(hold), flush=True)
            print("holding: press Enter (or close stdin) to stop everything", file=sys.stderr, flush=True)
            sys.stdin.readline()
    return result


def serve_candidates_only(args: argparse.Namespace) -> dict[str, Any]:
    """Only the candidate service (TLS + token), no Flower deployment, until Ctrl-C or SIGTERM."""
    creds = Credentials.load(args.credentials, 0)
    with ExitStack() as stack:
        service, running = start_candidate_service(args, creds, stack)
        print("CANDIDATE-SERVICE " + json.dumps(service), flush=True)
        seen = running.metrics()
        try:
            # One line a minute with the calls since the last one (health: grpc.health.v1 on the same port).
            while not running.wait(METRICS_EVERY_S):
                now = running.metrics()
                calls = json.dumps(now.since(seen).summary())
                print(
                    f"candidate service, last {METRICS_EVERY_S:.0f} s: {calls}", file=sys.stderr, flush=True
                )
                seen = now
        except KeyboardInterrupt:
            pass
        totals = running.metrics().summary()
    return {"candidate_service": service, "calls": totals, "status": "stopped"}


def succeeded(result: dict[str, Any]) -> bool:
    """Completed run, and refused unregistered SuperNodes when the drill was asked for."""
    drill = result.get("auth_drill")
    return result.get("status") == "finished:completed" and (drill is None or bool(drill["refused"]))


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--credentials", type=existing_dir, default=REPO / "deploy" / "credentials")
    parser.add_argument("--supernodes", type=positive_int, default=2)
    parser.add_argument("--run-config", default="", help="passed to flwr run --run-config")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and state (default: a new temp dir)")
    parser.add_argument(
        "--timeout", type=positive_float, default=1200.0, help="seconds before the run counts as hung"
    )
    parser.add_argument("--host", default="127.0.0.1", help="SuperLink bind address (0.0.0.0: everywhere)")
    parser.add_argument("--port", type=port, default=0, help="SuperLink port (0: any free port)")
    parser.add_argument(
        "--auth-drill",
        action="store_true",
        help="also start 2 unregistered SuperNodes, which must be refused",
    )
    parser.add_argument(
        "--candidate-llm", type=existing_dir, default=None, help="saved cloud LLM folder to serve"
    )
    parser.add_argument(
        "--candidate-address", type=host_port, default="127.0.0.1:0", help="candidate service host:port"
    )
    parser.add_argument("--candidate-token-file", type=Path, default=None)
    parser.add_argument("--candidate-device", default="auto", help="auto|cpu|cuda|cuda:N|mps")
    parser.add_argument("--hold", action="store_true", help="keep everything up after the run until Enter")
    parser.add_argument(
        "--candidate-only",
        action="store_true",
        help="serve only the candidate service (needs --candidate-llm) until Ctrl-C/SIGTERM; no Flower",
    )
    args = parser.parse_args()
    if args.supernodes < 1:
        parser.error(f"--supernodes must be >= 1, got {args.supernodes}")
    if args.candidate_llm is not None and not args.candidate_llm.is_dir():
        parser.error(
            f"--candidate-llm {args.candidate_llm} is not a folder (CloudLLM.save_pretrained writes one)"
        )
    # Checked before anything is created or started: a missing or too small credentials folder is an error.
    Credentials.load(args.credentials, 0 if args.candidate_only else args.supernodes)
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="lsc4rec-secure-"))).resolve()
    if args.candidate_token_file is None:
        args.candidate_token_file = args.workdir / "candidate-token"
    # SIGTERM (a CI timeout, systemd stop) unwinds like Ctrl-C, so every started process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.candidate_only:
        if args.candidate_llm is None:
            parser.error("--candidate-only needs --candidate-llm DIR")
        result = serve_candidates_only(args)
        print("RESULT " + json.dumps(result), flush=True)
        sys.exit(0)
    try:
        result = deploy(args)
    except (RuntimeError, TimeoutError, OSError) as error:
        # Everything started is already stopped (ExitStack); still end with a machine-readable line.
        result = {"status": f"error: {type(error).__name__}: {error}", "workdir": str(args.workdir)}
    except KeyboardInterrupt:
        result = {"status": "interrupted", "workdir": str(args.workdir)}
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(0 if succeeded(result) else 1)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: raise KeyboardInterrupt, so a stop request unwinds exactly like Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    main()
