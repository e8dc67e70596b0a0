"""Shared fixtures: small generated MovieLens folders (ML-100K and ML-1M layouts) and a text-file writer."""

from __future__ import annotations

import datetime
import functools
import importlib.util
import ipaddress
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lsc4rec.data.synthetic import PATTERN_WORDS, write_pattern_dataset, write_pattern_text  # noqa: F401

#: The read-only shared ML-100K copy, used by tests only when present (never shipped, never required).
SHARED_ML100K = Path(__file__).resolve().parents[2] / "shared/data/ml-100k"


@functools.cache
def load_script(path: Path) -> ModuleType:
    """Import a ``deploy/`` or ``benchmarks/`` script as a module, its folder first on ``sys.path`` (its
    siblings import as top-level modules there, as they do when the script runs); once per path."""
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while the class is made
    with mock.patch.object(sys, "path", [str(path.parent), *sys.path]):
        spec.loader.exec_module(module)
    return module


def genre_flags(*indices: int, n: int = 19) -> str:
    """The ``|``-joined 0/1 genre flags of a ``u.item`` line with the given genre indices set."""
    return "|".join("1" if i in indices else "0" for i in range(n))


# u.data rows (user, item, rating, timestamp), deliberately out of time order. User 1 has a timestamp tie
# (items 20 and 30 at t=200, 20 first in the file), user 3 has a single low rating.
ML100K_RATINGS: list[tuple[int, int, int, int]] = [
    (2, 10, 4, 300),
    (1, 20, 5, 200),
    (1, 10, 3, 100),
    (2, 30, 2, 100),
    (1, 30, 4, 200),
    (3, 20, 1, 50),
    (1, 40, 5, 150),
]

# ML-1M rows (user, item, rating, timestamp) with a tie for user 7 (items 3 then 1 at t=10).
ML1M_RATINGS: list[tuple[int, int, int, int]] = [
    (7, 3, 4, 10),
    (5, 2, 5, 978300760),
    (7, 1, 3, 10),
    (5, 1, 1, 978300000),
    (7, 2, 5, 5),
]


@pytest.fixture()
def write_text(tmp_path: Path) -> Callable[..., Path]:
    """Return ``write(name, text, encoding="utf-8") -> Path`` writing a file under ``tmp_path``."""

    def write(name: str, text: str, encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding=encoding)
        return path

    return write


@pytest.fixture()
def movielens_100k_dir(tmp_path: Path) -> Path:
    """A folder with ML-100K-style ``u.data`` (tab-separated) and ``u.item`` (``|``-separated, latin-1)."""
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ML100K_RATINGS))
    items = [
        f"10|Alpha (1990)|01-Jan-1990||http://example.org/10|{genre_flags(1, 5)}",
        # A '|' inside a title and a latin-1 character must both survive.
        f"20|Beta|Gamma (1995)|01-Jan-1995||http://example.org/20|{genre_flags()}",
        f"30|Épée (1996)|01-Jan-1996||http://example.org/30|{genre_flags(0)}",
        f"40|Delta (1997)|01-Jan-1997||http://example.org/40|{genre_flags(8, 18)}",
    ]
    (folder / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    return folder


@pytest.fixture()
def movielens_1m_dir(tmp_path: Path) -> Path:
    """A folder with ML-1M-style ``ratings.dat`` and ``movies.dat`` (``::``-separated, latin-1)."""
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ML1M_RATINGS))
    movies = [
        "1::Toy Story (1995)::Animation|Children's|Comedy",
        "2::Café (2000)::Drama",
        "3::Nothing (2001)::(no genres listed)",
    ]
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    return folder


def self_signed_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key, as PEM files in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


#: Overrides that make a federated run on a pattern dataset small and quick.
PATTERN_RUN = (
    "data.name=pattern",
    "data.max_len=10",
    "eval.sampled_negatives=20",
    "train.lr=0.005",
    "train.progress=false",
    "model.dropout=0.1",
)


#: The whole system (`make run`'s preset) at tiny size: small models, codebook and lists, a one-layer LLM.
WHOLE_TINY = (
    "federated.warm_start_epochs=1",
    "model.hidden_size=16",
    "model.base_params.intermediate_size=32",
    "model.base_params.num_heads=2",
    "solid.codebook_sizes=[8,2]",
    "collab.candidates=15",
    "collab.device_candidates=15",
    "mergenet.rank=4",
    "llm.max_len=10",
    "llm.hidden_size=32",
    "llm.intermediate_size=64",
    "llm.num_layers=1",
    "llm.num_heads=2",
    "llm.train.batch_size=32",
    "llm.train.progress=false",
)


def pattern_overrides(data: Path, *extra: str, system: str = "base") -> str:
    """The run config's ``overrides`` string for a quick federated run on the pattern dataset ``data``.

    ``system``: the groups' own defaults (``base``) unless a test asks for more (``whole``: make run's job).
    """
    return " ".join([f"system={system}", *PATTERN_RUN, f"data.path={data}", *extra])


def run_inprocess(data: Path, out: Path, nodes: int, *extra: str, system: str = "base") -> dict:
    """A federated run on the in-process grid with ``nodes`` nodes; returns its summary."""
    from lsc4rec.server.federated_run import run_federated
    from lsc4rec.settings import federated_settings_from_run_config
    from lsc4rec.simulations.launch.inprocess import InProcessGrid

    # The nodes find the run's folder (privacy ledgers) from output_dir/run_name, as in a Flower run.
    # Quoted for Hydra inside shell quoting (the overrides string is shlex-split): a folder called "false" or
    # "1" must stay a string.
    named = (f"\"output_dir='{out.parent}'\"", f"\"run_name='{out.name}'\"", *extra)
    run_config = {"overrides": pattern_overrides(data, *named, system=system)}
    return run_federated(
        InProcessGrid(nodes, run_config), federated_settings_from_run_config(run_config), out
    )


@pytest.fixture()
def task_identity() -> None:
    """Flower's task identity, which building a ``Message`` outside a running app reads (a test's run 1)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


@pytest.fixture(autouse=True, scope="session")
def isolated_text_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Text vectors are cached in a per-session folder, never in the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("lsc4rec-cache")
    previous = os.environ.get("LSC4REC_CACHE_DIR")
    os.environ["LSC4REC_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("LSC4REC_CACHE_DIR", None)
    else:
        os.environ["LSC4REC_CACHE_DIR"] = previous
