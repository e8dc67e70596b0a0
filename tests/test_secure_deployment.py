"""Secure deployment: credentials, TLS SuperLink with SuperNode auth, TLS+token candidate service, phones.

One real deployment (``deploy/secure.py`` on loopback, module-scoped fixture) serves every deployment test: a
SuperLink with TLS and ``--enable-supernode-auth``, two registered SuperNodes, two unregistered SuperNodes
that must be refused (one with an unknown key, one without a key), and the candidate service over TLS with a
token. While the deployment is held up after the
run (``--hold``), the fixture probes it from outside (the candidate service with right/wrong/no token, the
phone client in a subprocess, ``flwr supernode list``) and records what it saw; the tests then assert on that
evidence, so they do not depend on the order they run in.
"""

from __future__ import annotations

import json
import os
import queue
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from conftest import load_script, write_pattern_dataset
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lsc4rec.client.collab.candidate_client import CandidateServiceClient, CandidateServiceError
from lsc4rec.client.collab.fusion import fuse_scores, rerank
from lsc4rec.client.onnx_runtime import export_srm
from lsc4rec.models.srm import SASRec
from lsc4rec.simulations.launch.flower import flower_env

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The app's small configuration (as in test_flower_runs.py), 2 rounds; client-side evaluation off, since this
# file tests the secure transport (test_flower_runs.py covers the app's rounds), and it halves the run time.
SMALL = (
    "system=base data.name=pattern data.max_len=10 eval.sampled_negatives=20 train.lr=0.005 "
    "federated.rounds=2 federated.fraction_evaluate=0"
)
NUM_ITEMS = 40  # the pattern dataset's catalogue: the cloud LLM and the phone's SRM share its ids
MAX_LEN = 10
HISTORY = [3, 4, 5, 6, 7]  # a phone user's history, oldest first
CANDIDATES = 15
ALPHA = 0.3  # not 0.5: swapped LLM/SRM weights must change the order


def run(command: list[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``command`` from the repository root, capturing text output."""
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)


def result_line(stdout: str) -> dict[str, Any]:
    """The JSON of the last ``RESULT {json}`` line of ``stdout``."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line in:\n{stdout[-3000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def make_credentials(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``deploy/credentials.py --out out ...``."""
    return run([PYTHON, "deploy/credentials.py", "--out", str(out), *extra])


def load_phone_client() -> ModuleType:
    """``deploy/phone_client.py`` as a module (deploy/ is a folder of scripts, not a package)."""
    return load_script(REPO / "deploy" / "phone_client.py")


def status_of(call: Any) -> str:
    """The gRPC status name a candidate-service call ended with ("OK" when it returned)."""
    try:
        call()
    except CandidateServiceError as error:
        return error.code.name
    return "OK"


def pem_body_line(openssh_public_key: bytes) -> str:
    """First base64 line of the key's PEM SubjectPublicKeyInfo: how the SuperLink writes keys into its log."""
    key = serialization.load_ssh_public_key(openssh_public_key)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode().splitlines()[1]


# ---------------------------------------------------------------------- credentials.py (no deployment)
def test_credentials_are_in_flowers_formats_private_and_idempotent(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    out = tmp_path / "creds"
    first = make_credentials(out, "--supernodes", "2", "--host", "cloud.example", "--host", "10.1.2.3")
    assert first.returncode == 0, first.stderr
    assert result_line(first.stdout)["outcome"] == "created"
    private_keys = [
        "ca.key",
        "superlink.key",
        "candidate-service.key",
        "supernodes/supernode-0",
        "supernodes/supernode-1",
    ]
    for name in private_keys:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    # SuperNode keys load the way Flower 1.42 loads them: the private key as flower-supernode does, the public
    # key with `flwr supernode register`'s own loader (OpenSSH, NIST curve).
    for index in range(2):
        private = serialization.load_ssh_private_key(
            (out / f"supernodes/supernode-{index}").read_bytes(), None
        )
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        registered = try_load_public_key(out / f"supernodes/supernode-{index}.pub")
        expected = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert registered == expected
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    for server in ("superlink", "candidate-service"):
        certificate = x509.load_pem_x509_certificate((out / f"{server}.crt").read_bytes())
        certificate.verify_directly_issued_by(ca)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "cloud.example"}
        assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}
    before = (out / "ca.crt").read_bytes()

    same = make_credentials(out, "--supernodes", "2", "--host", "cloud.example", "--host", "10.1.2.3")
    assert same.returncode == 0 and result_line(same.stdout)["outcome"] == "unchanged"
    assert (out / "ca.crt").read_bytes() == before

    different = make_credentials(out, "--supernodes", "3")
    assert different.returncode == 2
    assert str(out) in different.stderr and "--force" in different.stderr
    assert (out / "ca.crt").read_bytes() == before and not (out / "supernodes/supernode-2").exists()

    forced = make_credentials(out, "--supernodes", "3", "--force")
    assert forced.returncode == 0 and result_line(forced.stdout)["outcome"] == "replaced"
    assert (out / "ca.crt").read_bytes() != before and (out / "supernodes/supernode-2").exists()

    foreign = tmp_path / "not-credentials"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = make_credentials(foreign, "--force")
    assert refused.returncode == 2 and "not written by deploy/credentials.py" in refused.stderr
    assert (foreign / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------- the phone client's fusion port
def test_phone_client_fusion_matches_lsc4rec_fusion() -> None:
    phone = load_phone_client()
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, 50, (6, 12), generator=generator)
    items[1, -3:] = 0  # empty slots
    items[2, :] = 0  # a row with no candidate at all
    llm = torch.randn(6, 12, generator=generator)
    srm = torch.randn(6, 12, generator=generator)
    srm[3, 4] = srm[3, 7]  # a tie: both orders must keep the LLM's order
    for method in phone.NORMALIZATIONS:
        for alpha in (0.0, 0.3, 1.0):
            expected = fuse_scores(llm, srm, items, alpha, method)
            got = phone.fuse_scores(llm.numpy(), srm.numpy(), items.numpy(), alpha, method)
            np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-6, err_msg=method)
            assert phone.rerank(items.numpy(), got).tolist() == rerank(items, expected).tolist(), method


# ---------------------------------------------------------------------- one secure deployment
@dataclass
class Evidence:
    """What the fixture saw of the deployment; every live probe's outcome or the error it raised."""

    root: Path
    workdir: Path
    credentials: Path
    srm: SASRec
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    candidate_service: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    own_candidates: list[int] = field(default_factory=list)
    phone: subprocess.CompletedProcess[str] | None = None
    nodes_while_held: list[dict[str, str]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def require(self, *probes: str) -> None:
        """Fail with the recorded error if any of ``probes`` could not be carried out."""
        failed = {probe: self.errors[probe] for probe in probes if probe in self.errors}
        assert not failed, f"{failed}\n--- secure.py stdout:\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}"


class LineReader:
    """Collects a process's stdout lines on a thread, so the fixture can wait for a line with a timeout."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        """Start reading ``process.stdout``."""
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float) -> dict[str, Any]:
        """The JSON after the next line starting with ``prefix``; TimeoutError/EOFError if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {prefix!r} line within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)  # the end stays visible to later waits
                raise EOFError(f"secure.py ended without a {prefix!r} line")
            self.seen.append(line)
            if line.startswith(prefix + " "):
                return json.loads(line.removeprefix(prefix + " "))

    def rest(self, timeout: float) -> str:
        """Everything printed until the stream ends (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
        return "".join(self.seen)


def probe_candidate_service(evidence: Evidence, service: dict[str, Any], token: str, other_ca: Path) -> None:
    """Call the live candidate service with the right, a wrong and no token, in plaintext and trusting
    another CA; record each call's gRPC status and the candidates the authenticated call returned."""
    target, ca = service["target"], Path(service["root_certificates"])
    # "localhost" as the certificate names it; the service binds 127.0.0.1.
    target = target.replace("127.0.0.1", "localhost")
    clients = {
        "right-token": CandidateServiceClient(target, token=token, root_certificates=ca, timeout=30),
        "wrong-token": CandidateServiceClient(target, token=token + "x", root_certificates=ca, timeout=30),
        "no-token": CandidateServiceClient(target, root_certificates=ca, timeout=30),
        "plaintext": CandidateServiceClient(target, token=token, timeout=30),
        "other-ca": CandidateServiceClient(target, token=token, root_certificates=other_ca, timeout=30),
    }
    for name, client in clients.items():
        with client:
            evidence.statuses[name] = status_of(lambda client=client: client.info(refresh=True))
    with CandidateServiceClient(target, token=token, root_certificates=ca, timeout=30) as client:
        evidence.own_candidates = client.recommend_one(HISTORY, CANDIDATES).items[0].tolist()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evidence]:
    """Run ``deploy/secure.py`` once (auth drill, candidate service, ``--hold``) and probe it while held."""
    from lsc4rec.models.llm.recommender import CloudLLM

    root = tmp_path_factory.mktemp("secure")
    data = write_pattern_dataset(
        root / "pattern.txt", num_users=120, num_items=NUM_ITEMS, seed=1, lengths=(5, 10)
    )
    made = make_credentials(root / "creds", "--supernodes", "2")
    assert made.returncode == 0, made.stderr
    other = make_credentials(root / "other-creds", "--supernodes", "0")
    assert other.returncode == 0, other.stderr
    # The cloud LLM the candidate service serves: tiny and untrained (this tests the transport, not accuracy).
    CloudLLM.from_scratch(
        NUM_ITEMS, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_len=MAX_LEN, seed=0
    ).save_pretrained(root / "llm")
    workdir = root / "deploy"
    token_file = root / "candidate-token"
    run_config = f'output-dir="{root}" overrides="{SMALL} data.path={data} run_name=secure"'
    command = [
        PYTHON,
        "deploy/secure.py",
        "--credentials",
        str(root / "creds"),
        "--supernodes",
        "2",
        "--workdir",
        str(workdir),
        "--timeout",
        "420",
        "--run-config",
        run_config,
        "--auth-drill",
        "--candidate-llm",
        str(root / "llm"),
        "--candidate-device",
        "cpu",
        "--candidate-token-file",
        str(token_file),
        "--hold",
    ]
    started = time.monotonic()
    stderr_log = root / "secure-stderr.log"
    with open(stderr_log, "w") as stderr:
        process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    reader = LineReader(process)
    # The phone's SRM, exported as the ONNX candidates graph while the deployment starts (the PyTorch
    # original is the reference).
    torch.manual_seed(0)
    srm = SASRec(NUM_ITEMS, hidden_size=16, num_blocks=2, num_heads=2, dropout=0.0, max_len=MAX_LEN).eval()
    evidence = Evidence(root=root, workdir=workdir, credentials=root / "creds", srm=srm)
    try:
        try:
            export_srm(srm, root / "srm-candidates.onnx", MAX_LEN, kind="candidates")
            evidence.candidate_service = reader.wait_for("CANDIDATE-SERVICE", timeout=180)
            token = token_file.read_text().strip()
            probe_candidate_service(
                evidence, evidence.candidate_service, token, root / "other-creds" / "ca.crt"
            )
            # The phone client in its own interpreter; -X importtime lists every module that process imports.
            evidence.phone = run(
                [
                    PYTHON,
                    "-X",
                    "importtime",
                    "deploy/phone_client.py",
                    "--service",
                    evidence.candidate_service["target"].replace("127.0.0.1", "localhost"),
                    "--ca",
                    str(root / "creds" / "ca.crt"),
                    "--token-file",
                    str(token_file),
                    "--model",
                    str(root / "srm-candidates.onnx"),
                    "--history",
                    ",".join(map(str, HISTORY)),
                    "--n",
                    str(CANDIDATES),
                    "--alpha",
                    str(ALPHA),
                ],
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        except Exception as error:  # recorded; the tests that need it fail with this message
            evidence.errors["candidate-service"] = f"{type(error).__name__}: {error}"
        try:
            hold = reader.wait_for("HOLD", timeout=540)
            listing = run(
                [
                    str(Path(PYTHON).with_name("flwr")),
                    "supernode",
                    "list",
                    hold["connection"],
                    "--format",
                    "json",
                ],
                env=flower_env(Path(hold["flwr_home"])),
            )
            evidence.nodes_while_held = json.loads(listing.stdout)["nodes"]
        except Exception as error:
            evidence.errors["hold"] = f"{type(error).__name__}: {error}"
    finally:
        # Releases the hold: secure.py stops everything it started and prints RESULT.
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.terminate()  # SIGTERM: secure.py still stops what it started
            process.wait(timeout=60)
        evidence.returncode = process.returncode
        evidence.stdout = reader.rest(timeout=10)
        evidence.stderr = stderr_log.read_text()
        evidence.seconds = time.monotonic() - started
    try:
        evidence.result = result_line(evidence.stdout)
    except AssertionError as error:
        evidence.errors["result"] = str(error)
    yield evidence


@pytest.mark.slow
def test_secure_run_completes_on_the_registered_supernodes(deployment: Evidence) -> None:
    deployment.require("result")
    result = deployment.result
    assert deployment.returncode == 0, deployment.stdout[-3000:] + deployment.stderr[-3000:]
    assert result["status"] == "finished:completed" and result["supernodes"] == 2
    metrics = json.loads((deployment.workdir.parent / "secure" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["rounds"]) == 2
    # Both registered SuperNodes trained in every round, and nobody else did.
    assert all(row["train"]["nodes-sampled"] == 2 for row in metrics["rounds"])
    assert all(row["train"]["valid-replies"] == 2 for row in metrics["rounds"])
    # Over HTTPS: the SuperLink served TLS and the CLI connection verifies it with the CA (never insecure).
    assert "Uvicorn running on https://127.0.0.1:" in (deployment.workdir / "superlink.log").read_text()
    config = (deployment.workdir / "flwr-home" / "config.toml").read_text()
    assert "root-certificates" in config and "insecure" not in config
    # Every process of the deployment is gone (each one's command line names a file under root).
    leftover = subprocess.run(["pgrep", "-f", str(deployment.root)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


@pytest.mark.slow
def test_unregistered_supernodes_are_refused(deployment: Evidence) -> None:
    deployment.require("result", "hold")
    registered = set(deployment.result["node_ids"])
    assert len(registered) == 2
    # While the deployment was up, the SuperLink knew the two registered SuperNodes (online), nobody else.
    assert {node["node-id"] for node in deployment.nodes_while_held} == registered
    assert all(node["status"] == "online" for node in deployment.nodes_while_held)
    drill = deployment.result["auth_drill"]
    assert drill["refused"] is True
    assert all(node["exit_code"] not in (None, 0) for node in drill["supernodes"].values())
    superlink_log = (deployment.workdir / "superlink.log").read_text().splitlines()

    # A fresh key pair nobody registered: the SuperLink does not know the key and refuses to activate it.
    node_log = (deployment.workdir / "supernode-unregistered-key.log").read_text()
    assert "Failed to activate SuperNode" in node_log
    refusals = [line for line in superlink_log if "No SuperNode found with the given public key" in line]
    intruder = pem_body_line((deployment.workdir / "unregistered-key.pub").read_bytes())
    assert any(intruder in line for line in refusals), refusals
    for index in range(2):  # ... and no registered SuperNode was refused
        public = (deployment.credentials / "supernodes" / f"supernode-{index}.pub").read_bytes()
        assert not any(pem_body_line(public) in line for line in refusals)

    # No key at all: the SuperNode asks to register itself, which --enable-supernode-auth refuses (without the
    # flag the SuperLink would register it and it would join the run).
    node_log = (deployment.workdir / "supernode-no-key.log").read_text()
    assert "SuperNode authentication is enabled. All SuperNodes must be registered via the CLI." in node_log
    assert any("/v1/fleet/register-node][ApiError:2001]" in line for line in superlink_log)


@pytest.mark.slow
def test_candidate_service_needs_tls_and_the_token(deployment: Evidence) -> None:
    deployment.require("candidate-service")
    assert deployment.candidate_service["tls"] is True
    assert deployment.statuses == {
        "right-token": "OK",
        "wrong-token": "UNAUTHENTICATED",
        "no-token": "UNAUTHENTICATED",
        "plaintext": "UNAVAILABLE",  # the service speaks TLS only
        "other-ca": "UNAVAILABLE",  # a certificate from another CA is not trusted
    }
    token_file = Path(deployment.candidate_service["token_file"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() not in deployment.stdout + deployment.stderr  # never logged


@pytest.mark.slow
def test_phone_client_reranks_like_pytorch_without_importing_torch(deployment: Evidence) -> None:
    deployment.require("candidate-service")
    phone = deployment.phone
    assert phone is not None and phone.returncode == 0, phone and phone.stderr[-3000:]
    result = result_line(phone.stdout)
    imported = {
        line.split("|")[-1].strip() for line in phone.stderr.splitlines() if line.startswith("import time:")
    }
    assert "onnxruntime" in imported and "grpc" in imported  # importtime did list the imports
    assert not {name for name in imported if name == "torch" or name.startswith("torch.")}
    assert result["torch_imported"] is False
    # The phone reranked the cloud's candidates for this history (the same list an authenticated client gets).
    assert result["candidates"] == deployment.own_candidates and len(set(result["candidates"])) == CANDIDATES
    items = torch.tensor([result["candidates"]])
    history = torch.zeros(1, MAX_LEN, dtype=torch.long)
    history[0, -len(HISTORY) :] = torch.tensor(HISTORY)
    with torch.no_grad():
        srm_scores = deployment.srm.score_candidates(history, items)
    np.testing.assert_allclose(result["srm_scores"], srm_scores[0].numpy(), rtol=1e-4, atol=1e-4)
    # Precondition for comparing orders: no two reference scores so close that rounding could swap them.
    gaps = np.diff(np.sort(srm_scores[0].numpy()))
    assert gaps.min() > 1e-4, "reference scores too close to compare rankings; change the seed"
    assert result["srm_ranking"] == rerank(items, srm_scores)[0].tolist()
    fused = fuse_scores(torch.tensor([result["llm_scores"]]), srm_scores, items, ALPHA, "minmax")
    assert np.diff(np.sort(fused[0].numpy())).min() > 1e-4
    assert result["ranking"] == rerank(items, fused)[0].tolist()
    assert result["ranking"] != result["srm_ranking"]  # the fusion did something


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ("12,abc", "--history entry 2 is 'abc'"),
        ("12,-3", "--history entry 2 is '-3'"),
        ("1.5", "--history entry 1 is '1.5'"),
        ("١٢", "--history entry 1 is '١٢'"),  # Arabic-Indic digits: int() would take them
        (" , ,", "--history is empty"),
    ],
)
def test_phone_client_names_a_bad_history_entry(history: str, message: str) -> None:
    phone = load_phone_client()
    with pytest.raises(phone.PhoneClientError, match=re.escape(message)) as refused:
        phone.parse_history(history)
    assert refused.value.status == 2
    assert phone.parse_history(" 12, 7,33 ") == [12, 7, 33]


def test_phone_client_refuses_a_token_file_that_holds_no_token(tmp_path: Path) -> None:
    phone = load_phone_client()
    pem = tmp_path / "ca.crt"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n")
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00token")
    good = tmp_path / "token"
    good.write_text("  s3cret-Token_42\n")
    for path, message in (
        (pem, "holds a PEM block"),
        (spaced, "one line of visible ASCII"),
        (binary, "cannot be read as text"),
        (tmp_path / "missing", "cannot be read as text"),
    ):
        with pytest.raises(phone.PhoneClientError, match=re.escape(message)):
            phone.read_token(path)
    assert phone.read_token(good) == "s3cret-Token_42"
