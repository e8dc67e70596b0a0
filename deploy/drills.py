"""Fault drills in real processes on loopback: kill what a real deployment loses, check what the system does.

    python deploy/drills.py supernode-crash        # kill -9 one of 4 SuperNodes mid-round, then restart it
    python deploy/drills.py supernode-mass-crash   # kill -9 3 of 10 SuperNodes (30%) in one round
    python deploy/drills.py superlink-restart      # kill -9 the SuperLink mid-run, restart it, resume
    python deploy/drills.py whole-superlink-restart  # the same with the whole system (make run's job)
    python deploy/drills.py whole-superlink-restart-small  # the same on a small generated dataset: exact?
    python deploy/drills.py candidate-service      # kill -9 the candidate service while devices request
    python deploy/drills.py hostile-supernodes     # 1 of 5 SuperNodes attacks: each attack x each rule
    python deploy/drills.py soak                   # the whole system for 30 rounds: memory, files, disk flat
    python deploy/drills.py all

Each drill runs the real ``flower-superlink`` / ``flower-supernode`` processes (``LocalDeployment``) or
the real candidate service in its own process, kills with SIGKILL (no cleanup, as a power cut or OOM kill
would), checks what it promises and prints one verdict per check. The federated drills train the plain
federated SASRec (``system=base``, d=64) over all Amazon Beauty users. Logs, outputs and each drill's JSON
land in ``--workdir``; the last line is ``RESULT {json}``; the exit status is 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from local import REPO, LocalDeployment  # deploy/ is the script's folder, so on sys.path

from lsc4rec.argument_types import existing_file, port, positive_float, positive_int
from lsc4rec.simulations.launch.flower import (
    FlowerRun,
    descendants,
    flower_executable,
    free_port,
    is_progress_line,
    read_run_status,
)

#: The run every federated drill trains: the plain federated SASRec over all Beauty users, small enough for
#: rounds of about half a minute on 2 cores with 4 SuperNodes.
BASE_OVERRIDES = "system=base model.hidden_size=64 train.progress=false federated.round_timeout=600"
#: The whole system (`make run`'s job: cloud LLM and candidate service, SOLID, MergeNet, collaborative
#: training, time moving with a closing round, ONNX on the devices) at a size that restarts in minutes: 300
#: Beauty users per node, one warm-start and one LLM epoch, 3 rounds.
WHOLE_OVERRIDES = (
    "system=whole train.progress=false llm.train.progress=false federated.round_timeout=900 "
    "federated.users_per_node=300 federated.warm_start_epochs=1 llm.train.epochs=1"
)
#: The whole system at the smallest size that keeps every part (cloud LLM, SOLID codebook, MergeNet, fusion,
#: time moving with a closing round, ONNX) on a generated dataset of item walks with item text (the exactness
#: check of the whole-system restart, without Beauty's float-level spread between real runs).
WHOLE_SMALL_OVERRIDES = " ".join(
    (
        "system=whole train.progress=false llm.train.progress=false federated.round_timeout=600",
        "data.name=walks data.max_len=10 eval.sampled_negatives=20 federated.warm_start_epochs=1",
        "model.hidden_size=16 model.base_params.intermediate_size=32 model.base_params.num_heads=2",
        "solid.codebook_sizes=[8,2] collab.candidates=15 collab.device_candidates=15 mergenet.rank=4",
        "llm.max_len=10 llm.hidden_size=32 llm.intermediate_size=64 llm.num_layers=1 llm.num_heads=2",
        "llm.train.batch_size=32 llm.train.epochs=1",
    )
)
#: Seconds any one run may take before the drill counts it as hung.
RUN_TIMEOUT = 1800.0


class StreamedRun:
    """``flwr run --stream`` in the background: its output is collected line by line as it arrives."""

    def __init__(self, deployment: LocalDeployment, run_config: str) -> None:
        """Submit the repository's app to ``deployment`` with ``run_config``."""
        self.deployment = deployment
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [
                flower_executable("flwr"),
                "run",
                str(REPO),
                "local-deployment",
                "--stream",
                "--run-config",
                run_config,
            ],
            env=deployment.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if is_progress_line(line):
                sys.stderr.write(line)  # the run's round lines, live
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> str:
        """Block until a line matching ``pattern`` arrives; return it (TimeoutError naming it otherwise)."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if compiled.search(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise TimeoutError(f"no line matching {pattern!r} within {timeout:.0f} s")
                self._changed.wait(min(left, 1.0))

    def abandon(self) -> str:
        """Stop following a run whose SuperLink is gone; return what ``flwr run`` printed last."""
        self.process.kill()
        self.process.wait()
        self._reader.join(timeout=10)
        return "".join(self.lines[-3:]).strip()

    def finish(self, timeout: float) -> FlowerRun:
        """Wait for ``flwr run`` to end; return the run's final status as the SuperLink reports it."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return FlowerRun(None, f"timed out after {timeout:.0f} s", "".join(self.lines))
        self._reader.join(timeout=10)
        return read_run_status("".join(self.lines), "local-deployment", self.deployment.env)


class Verdicts:
    """Named checks of one drill, each passed or failed, with what was observed."""

    def __init__(self, drill: str) -> None:
        """Start an empty list of checks for ``drill``."""
        self.drill = drill
        self.checks: list[dict[str, Any]] = []

    def check(self, name: str, passed: bool, observed: Any) -> None:
        """Record one check and print its verdict."""
        self.checks.append({"check": name, "passed": bool(passed), "observed": observed})
        print(f"[{self.drill}] {'PASS' if passed else 'FAIL'}: {name} ({observed})", flush=True)

    @property
    def passed(self) -> bool:
        """True when every check passed (and there was at least one)."""
        return bool(self.checks) and all(c["passed"] for c in self.checks)


def run_config(workdir: Path, name: str, rounds: int, extra: str = "", base: str = BASE_OVERRIDES) -> str:
    """The ``--run-config`` of a drill's run: outputs under ``workdir``, ``rounds`` rounds, ``base`` (the
    run's system and size) and ``extra``."""
    overrides = f"{base} federated.rounds={rounds} run_name={name} {extra}".strip()
    return f'output-dir="{workdir / "outputs"}" overrides="{overrides}"'


def write_walk_dataset(folder: Path, users: int = 400, items: int = 60, seed: int = 0) -> Path:
    """A learnable dataset for the small drills (:mod:`lsc4rec.data.synthetic`): each user walks item i -> i+1
    from a random start, with item text. Returns the sequence file (``walks.txt``, its text beside it)."""
    from lsc4rec.data.synthetic import write_pattern_dataset, write_pattern_text

    folder.mkdir(parents=True, exist_ok=True)
    data = write_pattern_dataset(folder / "walks.txt", users, items, seed, lengths=(6, 12))
    write_pattern_text(data, items)
    return data


def run_metrics(workdir: Path, name: str) -> dict[str, Any]:
    """The ``metrics.json`` a drill's run wrote ({} when it wrote none)."""
    path = workdir / "outputs" / name / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def wait_until_training(
    deployment: LocalDeployment, indices: list[int], before_run: dict[int, int], server_round: int
) -> None:
    """Block (up to 120 s) until each SuperNode in ``indices`` has received the current run's training
    instruction of ``server_round`` (``before_run``: its training instructions before the run), i.e. it is
    training in that round."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(train_instructions(deployment, i) >= before_run[i] + server_round for i in indices):
            return
        time.sleep(0.2)
    raise TimeoutError(f"SuperNodes {indices} received no round-{server_round} instruction within 120 s")


def train_instructions(deployment: LocalDeployment, index: int) -> int:
    """How many training instructions SuperNode ``index`` has logged receiving so far."""
    log = deployment.workdir / f"supernode-{index}.log"
    return (
        len(re.findall(r"Receiving: train message", log.read_text(errors="replace"))) if log.exists() else 0
    )


def supernode_crash(
    workdir: Path, nodes: int, killed: int, rounds: int, restart: bool, name: str
) -> Verdicts:
    """Kill -9 ``killed`` of ``nodes`` SuperNodes while they train in round 2; restart them when asked."""
    verdicts = Verdicts(name)
    with LocalDeployment(workdir, nodes) as deployment:
        deployment.start_all()
        victims = list(range(killed))
        before_run = {i: train_instructions(deployment, i) for i in victims}
        run = StreamedRun(deployment, run_config(workdir, name, rounds))
        run.wait_for(r"round 1/\d+:", RUN_TIMEOUT)
        wait_until_training(deployment, victims, before_run, 2)
        for index in victims:
            deployment.kill_supernode(index)
        print(f"[{name}] killed SuperNodes {victims} (shards {victims}) during round 2", flush=True)
        if restart:
            time.sleep(5.0)
            for index in victims:
                deployment.start_supernode(index)
            print(f"[{name}] restarted SuperNodes {victims}", flush=True)
        result = run.finish(RUN_TIMEOUT)
        (workdir / f"{name}-flwr-run.log").write_text(result.log)
    metrics = run_metrics(workdir, name)
    rows = metrics.get("rounds", [])
    verdicts.check("the run completes", result.ok, result.status)
    if len(rows) < 2:
        verdicts.check("round 2 is recorded", False, f"{len(rows)} rounds in metrics.json")
        return verdicts
    second = rows[1]
    train_failures = [f for f in second["failed_nodes"] if f["stage"] == "train"]
    verdicts.check(
        "round 2 aggregates the updates of the nodes still alive",
        second["train"]["valid-replies"] == nodes - killed and second["train"]["aggregated"] == 1,
        f"{int(second['train']['valid-replies'])} valid of {int(second['train']['nodes-sampled'])} sampled",
    )
    verdicts.check(
        "each killed node is reported once, as unavailable",
        len(train_failures) == killed
        and len({f["node_id"] for f in train_failures}) == killed
        and all("unavailable" in f["reason"].lower() or "heartbeat" in f["reason"] for f in train_failures),
        [f"node {f['node_id']}: {f['reason'][:90]}" for f in train_failures],
    )
    verdicts.check(
        "round 2 waits for the heartbeat timeout, not the round timeout",
        second["round_seconds"] < 300,
        f"round 2 took {second['round_seconds']:.0f} s (others {[round(r['round_seconds']) for r in rows]})",
    )
    later = [int(r["train"]["valid-replies"]) for r in rows[2:]]
    if restart:
        verdicts.check(
            "the restarted nodes rejoin in a later round",
            any(count == nodes for count in later),
            f"valid updates in rounds 3..{len(rows)}: {later}",
        )
    else:
        verdicts.check(
            "later rounds train on the nodes still alive",
            bool(later) and all(count == nodes - killed for count in later),
            f"valid updates in rounds 3..{len(rows)}: {later}",
        )
    verdicts.check(
        "every round updated the global model",
        all(r["train"]["aggregated"] == 1 for r in rows) and len(rows) == rounds,
        f"{len(rows)} rounds",
    )
    return verdicts


def checkpoint_round(path: Path) -> int:
    """The last complete round a run's checkpoint holds (0 when there is none yet)."""
    from lsc4rec.server.components.checkpoint_files import CheckpointError, load_checkpoint

    try:
        return int(load_checkpoint(path)["round"]) if path.is_file() else 0
    except CheckpointError:
        return 0  # being replaced right now: the rename is atomic, so the next read sees a whole file


def superlink_restart(
    workdir: Path,
    nodes: int,
    rounds: int,
    kill_in_round: int,
    name: str = "superlink-restart",
    base: str = BASE_OVERRIDES,
) -> Verdicts:
    """An uninterrupted run, then the same run with the SuperLink killed in round ``kill_in_round``,
    restarted, and the run resumed from its checkpoint: the final weights must be the same. ``base``: the
    run's system and size (the plain federated SASRec, or the whole system: :data:`WHOLE_OVERRIDES`)."""
    import numpy as np

    from lsc4rec.server.components.checkpoint_files import load_checkpoint

    verdicts = Verdicts(name)
    # Every node takes part in every round: wait for all of them after the restart.
    wait = f"federated.min_available_nodes={nodes} {base}"
    with LocalDeployment(workdir, nodes) as deployment:
        deployment.start_all()
        started = time.monotonic()
        reference = deployment.run(run_config(workdir, "uninterrupted", rounds, wait, ""), RUN_TIMEOUT)
        reference_seconds = time.monotonic() - started
        verdicts.check("the uninterrupted run completes", reference.ok, reference.status)
        before_run = {i: train_instructions(deployment, i) for i in range(nodes)}
        run = StreamedRun(deployment, run_config(workdir, "interrupted", rounds, wait, ""))
        checkpoint = workdir / "outputs" / "interrupted" / "checkpoint.pt"
        run.wait_for(rf"round {kill_in_round - 1}/\d+:", RUN_TIMEOUT)
        deadline = time.monotonic() + 120
        while checkpoint_round(checkpoint) < kill_in_round - 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        wait_until_training(deployment, list(range(nodes)), before_run, kill_in_round)
        deployment.kill_superlink()
        print(f"[{name}] killed the SuperLink (and its ServerApp) during round {kill_in_round}", flush=True)
        time.sleep(2.0)
        last_words = run.abandon()
        saved_round = checkpoint_round(checkpoint)
        status_when_killed = run_metrics(workdir, "interrupted").get("status")
        time.sleep(3.0)
        deployment.start_superlink()
        print(f"[{name}] restarted the SuperLink; resuming from round {saved_round + 1}", flush=True)
        resumed = deployment.run(
            run_config(workdir, "interrupted", rounds, f"{wait} federated.resume=true", ""), RUN_TIMEOUT
        )
        (workdir / f"{name}-resumed-flwr-run.log").write_text(resumed.log)
    verdicts.check(
        "the SuperLink died mid-run",
        saved_round == kill_in_round - 1 and status_when_killed != "completed",
        f"checkpoint at round {saved_round}, run status {status_when_killed!r}; flwr run printed last: "
        f"{last_words[-160:]!r}",
    )
    verdicts.check("the resumed run completes", resumed.ok, resumed.status)
    final = workdir / "outputs" / "uninterrupted" / "checkpoint.pt"
    if not (resumed.ok and reference.ok):
        return verdicts
    a, b = load_checkpoint(final), load_checkpoint(checkpoint)
    differences = {
        key: float(np.abs(a["arrays"][key].numpy() - b["arrays"][key].numpy()).max()) for key in a["arrays"]
    }
    largest = max(differences.values())
    verdicts.check(
        "the resumed run ends with the same weights as the uninterrupted one",
        largest == 0.0 and a["round"] == b["round"] == rounds,
        f"largest difference {largest:.3g} over {len(differences)} tensors; "
        f"rounds {a['round']} / {b['round']}",
    )
    ref_metrics, res_metrics = run_metrics(workdir, "uninterrupted"), run_metrics(workdir, "interrupted")
    ref_test = ref_metrics.get("final", {}).get("test", {})
    res_test = res_metrics.get("final", {}).get("test", {})
    verdicts.check(
        "and the same test metrics",
        bool(ref_test) and ref_test == res_test,
        {"uninterrupted": ref_test.get("full", ref_test), "resumed": res_test.get("full", res_test)},
    )
    ref_valid = [r.get("server_valid") for r in ref_metrics.get("rounds", [])]
    res_valid = [r.get("server_valid") for r in res_metrics.get("rounds", [])]
    verdicts.check(
        "and every round's server validation",
        len(ref_valid) == rounds and ref_valid == res_valid,
        {
            "uninterrupted": [v and v.get("NDCG@10") for v in ref_valid],
            "resumed": [v and v.get("NDCG@10") for v in res_valid],
        },
    )
    print(f"[{name}] uninterrupted run: {reference_seconds:.0f} s", flush=True)
    return verdicts


def _serve_popularity(port: int, token_file: Path) -> None:
    """The candidate-service process of the candidate-service drill: Beauty popularity, until killed."""
    from lsc4rec.data import leave_one_out, load_dataset
    from lsc4rec.models.popularity import PopularitySource
    from lsc4rec.serving import serve

    split = leave_one_out(load_dataset("beauty"))
    source = PopularitySource(split.train_sequences(), split.num_items, 50)
    stale = [s[:-2] if len(s) > 3 else s[:1] for s in split.train_sequences()]
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # delivered to sigwait below
    running = serve(
        source,
        address=f"127.0.0.1:{port}",
        token=token_file.read_text().strip(),
        user_histories=stale,
        source_is_thread_safe=True,
    )
    print("serving", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    running.stop(grace=1.0)


def candidate_service(workdir: Path, seconds: float, kill_at: float, down_for: float) -> Verdicts:
    """Devices serve their arrivals through the fallback cloud while the service is killed and restarted."""
    import torch

    from lsc4rec.client.collab.candidate_client import CandidateServiceClient
    from lsc4rec.client.collab.fallback import FallbackCloud, empty_lists
    from lsc4rec.client.collab.serving import CollaborationSettings
    from lsc4rec.client.collab.streaming import serve_arrivals
    from lsc4rec.data import leave_one_out, load_dataset
    from lsc4rec.models.srm import build_srm

    name = "candidate-service"
    verdicts = Verdicts(name)
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "candidate-token"
    token_file.write_text(os.urandom(16).hex())
    port = free_port()
    log = open(workdir / "candidate-service.log", "a")  # noqa: SIM115 - closed below

    def start_service() -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, __file__, "_serve", "--port", str(port), "--token-file", str(token_file)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert process.stdout is not None
        if process.stdout.readline().strip() != "serving":
            raise RuntimeError(f"the candidate service did not start (log: {log.name})")
        return process

    split = leave_one_out(load_dataset("beauty"))
    # Devices with at least 3 items held and 3 arriving; user ids are positions in the service's store.
    chosen = [(u, s) for u, s in enumerate(split.train_sequences()) if len(s) >= 6][:2048]
    users, sequences = [u for u, _ in chosen], [s for _, s in chosen]
    torch.manual_seed(0)
    model = build_srm("sasrec", split.num_items, hidden_size=32, num_heads=2, intermediate_size=64)
    settings = CollaborationSettings(candidates=20, mode="intelligent", ratio=0.3, device_candidates=20)
    events: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def devices() -> None:
        client = CandidateServiceClient(
            f"127.0.0.1:{port}", token=token_file.read_text().strip(), timeout=2.0
        )
        chunk, step = 64, 0
        # One fallback for the fleet's lifetime, as on a device: its pause spans batches.
        cloud = FallbackCloud(client, pause=0.25, max_pause=2.0)
        try:
            while not stop.is_set():
                rows = range((step * chunk) % len(sequences), (step * chunk) % len(sequences) + chunk)
                rows = [r % len(sequences) for r in rows]
                answered, unanswered = cloud.calls.answered, cloud.calls.unanswered
                failed = dict(cloud.calls.failed)
                began = time.monotonic()
                stale = cloud.recommend_for_users([users[r] for r in rows], settings.candidates)
                without_list = stale is None
                result = serve_arrivals(
                    model,
                    [sequences[r][:-3] for r in rows],
                    [sequences[r][-3:] for r in rows],
                    50,
                    (10,),
                    cloud=cloud,
                    stale=stale if stale is not None else empty_lists(len(rows), settings.candidates),
                    settings=settings,
                    generator=torch.Generator().manual_seed(step),
                )
                events.append(
                    {
                        "start": began,
                        "end": time.monotonic(),
                        "arrivals": result["replay-arrivals"],
                        "expected_arrivals": 3 * len(rows),
                        "answered": cloud.calls.answered - answered,
                        "unanswered": cloud.calls.unanswered - unanswered,
                        "failed": {k: v - failed.get(k, 0) for k, v in cloud.calls.failed.items()},
                        "without_list": without_list,
                        "collab_ndcg": result["replay-collab-NDCG@10"],
                    }
                )
                step += 1
        except BaseException as error:  # the drill's point: nothing may escape the devices' loop
            errors.append(error)
        finally:
            client.close()

    service = start_service()
    origin = time.monotonic()
    worker = threading.Thread(target=devices, name="devices")
    worker.start()
    time.sleep(kill_at)
    # A batch in flight at the kill can fail and end before wait() returns: "before the kill" means before the
    # signal was sent, "down" means after the process is gone; a batch spanning both belongs to neither.
    kill_sent = time.monotonic()
    service.send_signal(signal.SIGKILL)
    service.wait()
    killed_at = time.monotonic()
    print(f"[{name}] killed the candidate service at {killed_at - origin:.1f} s", flush=True)
    time.sleep(down_for)
    service = start_service()
    back_at = time.monotonic()
    print(f"[{name}] the candidate service is back at {back_at - origin:.1f} s", flush=True)
    # However long the restart took (a loaded machine loads the data slowly), watch the devices after it for
    # at least as long as before the kill.
    time.sleep(max(seconds - (back_at - origin), kill_at))
    stop.set()
    worker.join(timeout=120)
    service.send_signal(signal.SIGTERM)
    service.wait(timeout=30)
    log.close()

    verdicts.check("the devices never crashed", not errors and not worker.is_alive(), repr(errors[:1]))
    before = [e for e in events if e["end"] < kill_sent]
    during = [e for e in events if e["start"] > killed_at and e["end"] < back_at]
    after = [e for e in events if e["start"] > back_at]
    verdicts.check(
        "before the kill every call is answered",
        bool(before) and all(e["unanswered"] == 0 for e in before),
        f"{len(before)} batches, {sum(e['answered'] for e in before)} calls answered",
    )
    failed = sum(sum(e["failed"].values()) for e in during)
    verdicts.check(
        "while it is down the devices serve on and count the failures",
        bool(during)
        and all(e["answered"] == 0 and e["unanswered"] > 0 and e["without_list"] for e in during),
        f"{len(during)} batches served without the cloud; {failed} failed calls "
        f"({sorted({k for e in during for k in e['failed']})}), "
        f"{sum(e['unanswered'] for e in during)} unanswered",
    )
    first = next((i for i, e in enumerate(after) if e["answered"] > 0), None)
    resumed_after = after[first]["start"] - back_at if first is not None else None
    verdicts.check(
        "after the restart the devices use the service again, within 10 s",
        first is not None
        and resumed_after is not None
        and resumed_after <= 10.0
        and all(e["unanswered"] == 0 for e in after[first + 1 :]),
        f"first answered batch {resumed_after:.2f} s after the restart, every batch answered after it "
        f"({len(after) - first - 1} batches)"
        if first is not None
        else "no answered batch after the restart",
    )
    verdicts.check(
        "no arrival was dropped",
        all(e["arrivals"] == e["expected_arrivals"] for e in events),
        f"{int(sum(e['arrivals'] for e in events))} arrivals ranked in {len(events)} batches",
    )
    return verdicts


#: The soak: the whole system at small size for many rounds, half of 6 SuperNodes sampled per round, the
#: server validating every 5th round.
SOAK_OVERRIDES = (
    f"{WHOLE_OVERRIDES} federated.users_per_node=200 strategy.fraction_train=0.5 "
    "federated.server_eval_every=5"
)


def _proc_usage(pids: list[int]) -> dict[str, float]:
    """Resident memory (MiB), open file descriptors and threads summed over ``pids`` (exited ones skipped)."""
    rss = fds = threads = 0.0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            open_fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, PermissionError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += float(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads += float(line.split()[1])
        fds += open_fds
    return {"rss_mib": rss, "open_files": fds, "threads": threads}


#: Which part of the deployment a process is, by the executable its command line names.
PROCESS_ROLES = (
    ("flower-superlink", "superlink"),
    ("flwr-serverapp", "serverapp"),
    ("flower-supernode", "supernodes"),
    ("flwr-clientapp", "clientapps"),
)


def _role(pid: int) -> str:
    """The deployment part ``pid`` belongs to (:data:`PROCESS_ROLES`; "other" for anything else)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    return next((role for marker, role in PROCESS_ROLES if marker in command), "other")


def _rss_by_role(pids: list[int]) -> dict[str, float]:
    """Resident memory (MiB) summed per deployment part (``rss_<role>_mib``)."""
    out: dict[str, float] = {}
    for pid in pids:
        key = f"rss_{_role(pid)}_mib"
        out[key] = out.get(key, 0.0) + _proc_usage([pid])["rss_mib"]
    return out


def _folder_mib(paths: list[Path]) -> float:
    """The size of every file under ``paths`` (MiB), a file with several names (hard links: the nodes'
    shared saved records) counted once."""
    sizes: dict[tuple[int, int], int] = {}
    for root in paths:
        for file in root.rglob("*") if root.is_dir() else []:
            with suppress(OSError):  # a file that vanished while being measured
                status = file.stat()
                if file.is_file():
                    sizes[(status.st_dev, status.st_ino)] = status.st_size
    return sum(sizes.values()) / 2**20


def _slope(values: list[float], steps: list[int] | None = None) -> float:
    """The least-squares slope of ``values`` per step (at ``steps``; default 0, 1, 2, ...)."""
    xs = list(range(len(values))) if steps is None else steps
    count = len(values)
    if count < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / count, sum(values) / count
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (v - mean_y) for x, v in zip(xs, values, strict=True)) / spread


def plot_soak(per_round: list[dict[str, float]], path: Path) -> Path:
    """The soak's curves: each round's peak memory (all processes and each part), open files, threads and
    disk use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(1, len(per_round) + 1))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    memory, counts, disk = axes
    memory.plot(steps, [row["rss_mib"] / 1024 for row in per_round], label="all processes", linewidth=2)
    for role in sorted({k for row in per_round for k in row if k.startswith("rss_") and k != "rss_mib"}):
        seen = [(step, row[role] / 1024) for step, row in zip(steps, per_round, strict=True) if role in row]
        label = role.removeprefix("rss_").removesuffix("_mib")
        memory.plot([x for x, _ in seen], [y for _, y in seen], marker=".", linestyle="-", label=label)
    memory.set(title="peak resident memory per round", xlabel="round", ylabel="GiB")
    memory.legend(fontsize=7)
    counts.plot(steps, [row["open_files"] for row in per_round], label="open files")
    counts.plot(steps, [row["threads"] for row in per_round], label="threads")
    counts.set(title="open files and threads (peak per round)", xlabel="round")
    counts.legend(fontsize=7)
    disk.plot(steps, [row["disk_mib"] for row in per_round])
    disk.set(title="disk: run folder, node state, ONNX graphs", xlabel="round", ylabel="MiB")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def soak(workdir: Path, nodes: int, rounds: int) -> Verdicts:
    """The whole system for ``rounds`` rounds in real processes, its processes' memory, open files and
    threads and its disk use (run folder, node state, ONNX graphs) sampled every second and kept per round;
    each must be flat after the first rounds."""
    name = "soak"
    verdicts = Verdicts(name)
    onnx_root = Path(tempfile.gettempdir()) / "lsc4rec-onnx"
    before_onnx = set(onnx_root.iterdir()) if onnx_root.is_dir() else set()
    per_round: list[dict[str, float]] = []
    with LocalDeployment(workdir, nodes) as deployment:
        deployment.start_all()
        run = StreamedRun(deployment, run_config(workdir, name, rounds, "", SOAK_OVERRIDES))
        roots = [p.pid for p in (deployment.superlink, *deployment.nodes.values()) if p is not None]
        peak: dict[str, float] = {}
        seen = 0
        while run.process.poll() is None:
            pids = roots + [pid for root in roots for pid in descendants(root)]
            # Per part too, so a trend can be traced to the process that grows.
            usage = _proc_usage(pids) | _rss_by_role(pids)
            peak = {k: max(v, peak.get(k, 0.0)) for k, v in usage.items()}
            done = len(re.findall(r"round \d+/\d+:", "".join(run.lines)))
            if done > seen:
                ours = [p for p in onnx_root.iterdir() if p not in before_onnx] if onnx_root.is_dir() else []
                disk = _folder_mib([workdir / "outputs" / name, *ours])
                for _ in range(done - seen):
                    per_round.append({**peak, "disk_mib": disk})
                    print(f"[{name}] round {len(per_round)}: {per_round[-1]}", flush=True)
                seen, peak = done, {}
            time.sleep(1.0)
        result = run.finish(RUN_TIMEOUT)
        (workdir / f"{name}-flwr-run.log").write_text(result.log)
    ours = [p for p in onnx_root.iterdir() if p not in before_onnx] if onnx_root.is_dir() else []
    left_behind = _folder_mib(ours)
    (workdir / "soak-rounds.json").write_text(json.dumps(per_round, indent=2))
    if per_round:
        print(f"[{name}] curves: {plot_soak(per_round, workdir / 'soak.png')}", flush=True)
    verdicts.check(
        "the run completes every round",
        result.ok and len(per_round) == rounds,
        f"{result.status}, {len(per_round)} rounds",
    )
    settled = per_round[5:]
    if len(settled) < 5:
        return verdicts
    for key, unit, allowed in (
        ("rss_mib", "MiB", 0.002),
        ("open_files", "files", 0.002),
        ("threads", "threads", 0.002),
        ("disk_mib", "MiB", 0.002),
    ):
        values = [row[key] for row in settled]
        slope = _slope(values)
        mean = sum(values) / len(values)
        # Flat: the trend over the settled rounds adds less than 0.2% of the mean per round (5% over 25).
        verdicts.check(
            f"{key} is flat after round 5",
            slope <= allowed * mean,
            f"slope {slope:+.3f} {unit}/round on a mean of {mean:.1f} (rounds 6-{len(per_round)}: "
            f"{min(values):.1f}-{max(values):.1f})",
        )
    # Not a check: where a memory trend lives (each part's own per-round peak).
    # A part absent when memory was sampled (a ClientApp lives for one message) is left out of that round,
    # not counted as 0 MiB.
    for role in sorted({k for row in settled for k in row if k.startswith("rss_") and k != "rss_mib"}):
        seen = [(step, row[role]) for step, row in enumerate(settled) if role in row]
        values = [value for _, value in seen]
        slope = _slope(values, [step for step, _ in seen])
        print(
            f"[{name}] {role}: slope {slope:+.2f} MiB/round, mean {sum(values) / len(values):.0f} "
            f"(seen in {len(seen)} of {len(settled)} rounds)"
        )
    verdicts.check(
        "the nodes' ONNX graphs are removed when the run ends",
        left_behind < 1.0,
        f"{left_behind:.1f} MiB left under {onnx_root}",
    )
    return verdicts


#: The aggregation rules the hostile drill compares: (label, strategy overrides).
HOSTILE_RULES = (
    ("fedavg", "strategy=fedavg"),
    ("fedavg+bounds", "strategy=fedavg strategy.max_example_ratio=3 strategy.update_norm_ratio=3"),
    ("median", "strategy=median"),
    ("trimmed-mean", "strategy=trimmed_mean"),
)
#: The attacks of one hostile node: (label, fault overrides). ``honest`` is the run without it.
HOSTILE_ATTACKS = (
    ("honest", ""),
    ("update x 1e6", "federated.faults.attack=scale federated.faults.attack_scale=1e6"),
    ("sign flipped x 10", "federated.faults.attack=flip federated.faults.attack_scale=10"),
    ("claims 1e9 examples", "federated.faults.attack=count federated.faults.attack_examples=1e9"),
    ("poisoned data", "federated.faults.attack=poison"),
)
#: Replies every rule must refuse before aggregating: (label, fault overrides).
REFUSED_REPLIES = (
    ("malformed arrays", "federated.faults.malformed=0"),
    ("a NaN in the update", "federated.faults.attack=nonfinite"),
)
#: The size of every hostile run: 300 users per node, the server's validation only (no client evaluation).
HOSTILE_SIZE = "federated.users_per_node=300 federated.fraction_evaluate=0"
#: A rule holds when its final validation NDCG@10 under attack keeps this share of the honest FedAvg's.
HOLDS_SHARE = 0.8


def _save_start(checkpoint: Path, target: Path) -> Path:
    """The global weights of a run's ``checkpoint``, saved as a state dict (``federated.initial_weights``)."""
    import torch

    from lsc4rec.server.components.checkpoint_files import load_checkpoint

    arrays = load_checkpoint(checkpoint)["arrays"]
    torch.save({key: torch.from_numpy(arrays[key].numpy().copy()) for key in arrays}, target)
    return target


def _run_name(*labels: str) -> str:
    """A run folder name from table labels: letters, digits and dashes only (a Hydra value, a path)."""
    return "--".join(re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-") for label in labels)


def _final_valid(workdir: Path, name: str) -> float | None:
    rows = run_metrics(workdir, name).get("rounds", [])
    return float(rows[-1]["server_valid"]["NDCG@10"]) if rows else None


def hostile_supernodes(workdir: Path, nodes: int, rounds: int) -> Verdicts:
    """One of ``nodes`` real SuperNodes attacks (partition 0): each attack under each aggregation rule, from
    one shared start; final validation NDCG@10 against the same rule's honest run, and the refused kinds."""
    name = "hostile-supernodes"
    verdicts = Verdicts(name)
    table: dict[str, dict[str, float | None]] = {}
    refused: dict[str, dict[str, Any]] = {}
    with LocalDeployment(workdir, nodes) as deployment:
        deployment.start_all()
        # The shared start: the cloud's warm start plus one honest round, so every run starts from a model
        # that already ranks well above random and an attack has something to destroy.
        start = deployment.run(
            run_config(workdir, "start", 1, f"{HOSTILE_SIZE} federated.warm_start_epochs=2"), RUN_TIMEOUT
        )
        verdicts.check("the shared start completes", start.ok, start.status)
        if not start.ok:
            return verdicts
        weights = _save_start(workdir / "outputs" / "start" / "checkpoint.pt", workdir / "start.pt")
        common = f"{HOSTILE_SIZE} federated.initial_weights={weights} federated.checkpoint=false"
        for rule, rule_overrides in HOSTILE_RULES:
            for attack, attack_overrides in HOSTILE_ATTACKS:
                hostile = "federated.faults.hostile=0" if attack_overrides else ""
                run_name = _run_name(rule, attack)
                extra = f"{common} {rule_overrides} {hostile} {attack_overrides}"
                result = deployment.run(run_config(workdir, run_name, rounds, extra), RUN_TIMEOUT)
                table.setdefault(attack, {})[rule] = _final_valid(workdir, run_name) if result.ok else None
                print(f"[{name}] {rule:<14} {attack:<20} {table[attack][rule]}", flush=True)
        for kind, overrides in REFUSED_REPLIES:
            run_name = _run_name("refused", kind)
            hostile = "" if "malformed" in overrides else "federated.faults.hostile=0"
            result = deployment.run(
                run_config(workdir, run_name, rounds, f"{common} {hostile} {overrides}"), RUN_TIMEOUT
            )
            metrics = run_metrics(workdir, run_name)
            reasons = [f["reason"] for f in metrics.get("failed_nodes", []) if f.get("stage") == "train"]
            refused[kind] = {
                "completed": result.ok,
                "final_valid": _final_valid(workdir, run_name),
                "reasons": sorted(set(reasons)),
            }
    honest = table["honest"]["fedavg"] or 0.0
    verdicts.check("the honest FedAvg run learns", honest > 0.01, f"final validation NDCG@10 {honest:.4f}")
    taken = table["update x 1e6"]["fedavg"]
    verdicts.check(
        "the drill bites: one scaled node takes plain FedAvg over",
        taken is not None and taken < 0.5 * honest,
        f"{taken} against honest {honest:.4f}",
    )
    for rule, _ in HOSTILE_RULES[1:]:
        under_attack = {attack: table[attack][rule] for attack, _ in HOSTILE_ATTACKS[1:]}
        weakest = min((v for v in under_attack.values() if v is not None), default=None)
        verdicts.check(
            f"{rule} holds every attack within {HOLDS_SHARE:.0%} of honest FedAvg",
            all(v is not None for v in under_attack.values())
            and weakest is not None
            and weakest >= HOLDS_SHARE * honest,
            {attack: value for attack, value in under_attack.items()},
        )
    for kind, row in refused.items():
        verdicts.check(
            f"{kind} is refused, named, and the run learns on",
            row["completed"] and bool(row["reasons"]) and (row["final_valid"] or 0.0) >= HOLDS_SHARE * honest,
            row,
        )
    (workdir / "hostile-table.json").write_text(json.dumps({"table": table, "refused": refused}, indent=2))
    print(f"[{name}] attack x rule -> final validation NDCG@10:", flush=True)
    print("| attack | " + " | ".join(rule for rule, _ in HOSTILE_RULES) + " |", flush=True)
    for attack, row in table.items():
        cells = " | ".join("failed" if row[r] is None else f"{row[r]:.4f}" for r, _ in HOSTILE_RULES)
        print(f"| {attack} | {cells} |", flush=True)
    return verdicts


DRILLS: dict[str, Callable[[argparse.Namespace, Path], Verdicts]] = {
    "supernode-crash": lambda args, work: supernode_crash(
        work / "supernode-crash", 4, 1, args.rounds, True, "supernode-crash"
    ),
    "supernode-mass-crash": lambda args, work: supernode_crash(
        work / "supernode-mass-crash", 10, 3, 3, False, "supernode-mass-crash"
    ),
    "superlink-restart": lambda args, work: superlink_restart(work / "superlink-restart", 4, args.rounds, 2),
    "whole-superlink-restart": lambda args, work: superlink_restart(
        work / "whole-superlink-restart", 4, 3, 2, "whole-superlink-restart", WHOLE_OVERRIDES
    ),
    "whole-superlink-restart-small": lambda args, work: superlink_restart(
        work / "whole-superlink-restart-small",
        4,
        3,
        2,
        "whole-superlink-restart-small",
        f"{WHOLE_SMALL_OVERRIDES} data.path={write_walk_dataset(work / 'whole-small-data')}",
    ),
    "soak": lambda args, work: soak(work / "soak", 6, args.soak_rounds),
    "hostile-supernodes": lambda args, work: hostile_supernodes(work / "hostile-supernodes", 5, 2),
    "candidate-service": lambda args, work: candidate_service(
        work / "candidate-service", args.service_seconds, args.service_seconds / 4, args.service_seconds / 4
    ),
}


def main() -> None:
    """Command-line entry point."""
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve_parser = argparse.ArgumentParser()
        serve_parser.add_argument("_serve")
        serve_parser.add_argument("--port", type=port, required=True)
        serve_parser.add_argument("--token-file", type=existing_file, required=True)
        serve_args = serve_parser.parse_args()
        _serve_popularity(serve_args.port, serve_args.token_file)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("drill", choices=[*DRILLS, "all"])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="logs and outputs (default: a new temp dir)"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=4, help="rounds of the crash and restart drills"
    )
    parser.add_argument(
        "--service-seconds", type=positive_float, default=40.0, help="length of the service drill"
    )
    parser.add_argument("--soak-rounds", type=positive_int, default=30, help="rounds of the soak drill")
    args = parser.parse_args()
    # A drill stopped with SIGTERM unwinds like Ctrl-C: its deployment's processes are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lsc4rec-drills-"))
    names = list(DRILLS) if args.drill == "all" else [args.drill]
    results = {}
    for name in names:
        started = time.monotonic()
        try:
            verdicts = DRILLS[name](args, workdir)
        except Exception as error:  # a drill that cannot run to its end is a failed drill, not a crash
            verdicts = Verdicts(name)
            verdicts.check("the drill runs to its end", False, f"{type(error).__name__}: {error}")
        results[name] = {
            "passed": verdicts.passed,
            "seconds": round(time.monotonic() - started, 1),
            "checks": verdicts.checks,
        }
        (workdir / f"{name}.json").write_text(json.dumps(results[name], indent=2))
    summary = {
        "passed": all(r["passed"] for r in results.values()),
        "workdir": str(workdir),
        "drills": results,
    }
    (workdir / "drills.json").write_text(json.dumps(summary, indent=2))
    print("RESULT " + json.dumps(summary), flush=True)
    sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
    main()
