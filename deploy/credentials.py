"""Credentials for a secure deployment: a CA, TLS certificates and SuperNode authentication keys.

    python deploy/credentials.py --out deploy/credentials --supernodes 2 --host 192.168.1.10 --host cloud.lan

Writes into ``--out``:

- ``ca.crt`` / ``ca.key``: a self-signed certificate authority (devices trust ``ca.crt``; keep ``ca.key``
  off the devices);
- ``superlink.crt`` / ``superlink.key``: the SuperLink's TLS certificate, signed by the CA, for
  ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile superlink.crt --ssl-keyfile superlink.key``;
- ``candidate-service.crt`` / ``candidate-service.key``: the same for the gRPC candidate service
  (:class:`lsc4rec.serving.TLSConfig`);
- ``supernodes/supernode-<i>`` / ``supernode-<i>.pub``: one EC P-384 key pair per SuperNode in OpenSSH
  format, which is what Flower 1.42 reads (``flower-supernode --auth-supernode-private-key`` loads the private
  key with ``load_ssh_private_key``; ``flwr supernode register`` loads the public key with
  ``load_ssh_public_key`` and accepts NIST curves only);
- ``manifest.json``: what was generated (host names, SuperNode count, certificate fingerprints, expiry).

Both certificates name ``localhost``, ``127.0.0.1`` and every ``--host`` (DNS name or IP address) as subject
alternative names: a client must reach the server under one of them or the TLS handshake fails. Private keys
are created with mode 0600 (never readable by others, not even briefly).

Re-running the same command is a no-op (exit 0). A different request against an existing output folder is
refused unless ``--force``, which replaces everything (the new CA invalidates every certificate and key handed
out before). A folder this script did not write is never replaced.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lsc4rec.argument_types import non_negative_int, positive_int

MANIFEST = "manifest.json"
#: Host names every certificate carries, so loopback deployments and local checks work out of the box.
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
# Certificates start a little in the past: a device whose clock runs slightly behind the cloud's would
# otherwise refuse a freshly made certificate as "not yet valid".
_CLOCK_SKEW = dt.timedelta(minutes=10)


class CredentialsError(RuntimeError):
    """A request that cannot be carried out (e.g. an existing output folder without ``--force``)."""


@dataclass(frozen=True)
class Request:
    """What to generate: how many SuperNode key pairs, which host names, certificate lifetimes."""

    supernodes: int
    hosts: tuple[str, ...]
    days: int
    ca_days: int

    def as_dict(self) -> dict[str, object]:
        """The fields that decide whether an existing folder already holds this request."""
        return {"supernodes": self.supernodes, "hosts": list(self.hosts)}


def normalise_hosts(extra: list[str]) -> tuple[str, ...]:
    """``localhost``, ``127.0.0.1`` and the ``--host`` values, deduplicated in order; validates each."""
    hosts: list[str] = []
    for host in [*DEFAULT_HOSTS, *extra]:
        host = host.strip()
        if not host:
            raise CredentialsError("--host must not be empty")
        if "://" in host or "/" in host or (":" in host and not _is_ip(host)):
            raise CredentialsError(
                f"--host {host!r} must be a bare DNS name or IP address (no scheme, port or path)"
            )
        if host not in hosts:
            hosts.append(host)
    return tuple(hosts)


def _is_ip(host: str) -> bool:
    """True for an IPv4/IPv6 address literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _subject_alt_names(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    """IP addresses as IP SANs, everything else as DNS SANs (TLS clients match them separately)."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        if _is_ip(host):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        else:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _new_tls_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key: accepted by gRPC (BoringSSL), OpenSSL/uvicorn and mobile TLS stacks; instant to make."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lsc4rec deployment"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(days: int, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate (may only sign end-entity certificates) and its key."""
    key = _new_tls_key()
    name = _name("lsc4rec deployment CA")
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def make_server_certificate(
    common_name: str,
    hosts: tuple[str, ...],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    days: int,
    now: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for ``hosts`` signed by the CA, and its key."""
    key = _new_tls_key()
    public = key.public_key()
    ca_public = ca_key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        # A server certificate never outlives the CA that vouches for it.
        .not_valid_after(min(now + dt.timedelta(days=days), ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_subject_alt_names(hosts), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        # Strict verifiers (Python 3.13's default X.509 flags among them) require the authority key id.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def make_supernode_key() -> tuple[bytes, bytes]:
    """One SuperNode key pair, EC P-384 as in Flower's docs: (OpenSSH private key, OpenSSH public key)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        # flower-supernode loads the key without a passphrase (load_ssh_private_key(data, None)).
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_certificate(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (O_EXCL: never overwrites, never world-readable)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    # The umask can only remove bits; set the mode explicitly in case it removed less than expected.
    os.chmod(path, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Create a public file (certificate or public key), readable by others (mode 0644)."""
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex(":")


def generate(directory: Path, request: Request) -> dict[str, object]:
    """Write credentials for ``request`` into the empty ``directory``; return the manifest."""
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_certificate = make_ca(request.ca_days, now)
    write_private(directory / "ca.key", _pem_key(ca_key))
    write_public(directory / "ca.crt", _pem_certificate(ca_certificate))
    servers: dict[str, dict[str, str]] = {}
    for name in ("superlink", "candidate-service"):
        key, certificate = make_server_certificate(
            f"lsc4rec {name}", request.hosts, ca_key, ca_certificate, request.days, now
        )
        write_private(directory / f"{name}.key", _pem_key(key))
        write_public(directory / f"{name}.crt", _pem_certificate(certificate))
        servers[name] = {
            "certificate": f"{name}.crt",
            "key": f"{name}.key",
            "sha256": _fingerprint(certificate),
            "not_after": certificate.not_valid_after_utc.isoformat(),
        }
    nodes = directory / "supernodes"
    nodes.mkdir()
    supernodes = []
    for index in range(request.supernodes):
        private, public = make_supernode_key()
        write_private(nodes / f"supernode-{index}", private)
        write_public(nodes / f"supernode-{index}.pub", public)
        name = f"supernodes/supernode-{index}"
        supernodes.append({"private_key": name, "public_key": f"{name}.pub"})
    manifest: dict[str, object] = {
        **request.as_dict(),
        "created": now.isoformat(),
        "ca": {
            "certificate": "ca.crt",
            "key": "ca.key",
            "sha256": _fingerprint(ca_certificate),
            "not_after": ca_certificate.not_valid_after_utc.isoformat(),
        },
        "servers": servers,
        "supernode_keys": supernodes,
    }
    write_public(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def manifest_files(manifest: dict) -> list[str]:
    """Every file (relative path) a manifest says its folder holds."""
    files = [manifest["ca"]["certificate"], manifest["ca"]["key"], MANIFEST]
    for server in manifest["servers"].values():
        files += [server["certificate"], server["key"]]
    for pair in manifest["supernode_keys"]:
        files += [pair["private_key"], pair["public_key"]]
    return files


def read_manifest(directory: Path) -> dict | None:
    """The manifest of an existing credentials folder, None if it has none; errors name a broken one."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest_files(manifest)  # checks that the expected fields are there
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CredentialsError(
            f"{path} is not a manifest written by deploy/credentials.py ({error}); "
            "move the folder away or choose another --out"
        ) from error
    return manifest


def ensure(out: Path, request: Request, force: bool) -> tuple[str, dict]:
    """Make ``out`` hold credentials for ``request``; return ``("created"|"unchanged"|"replaced", manifest)``.

    An existing folder with the same request (and every file present) is left as it is. Otherwise generation
    happens in a sibling temporary folder that replaces ``out`` only when complete, so an interrupted run
    never leaves half a set behind.
    """
    manifest = read_manifest(out) if out.is_dir() else None
    if out.exists() and not out.is_dir():
        raise CredentialsError(f"--out {out} exists and is not a folder")
    if out.is_dir() and manifest is None and any(out.iterdir()):
        raise CredentialsError(
            f"--out {out} exists and holds files not written by deploy/credentials.py (no {MANIFEST}); "
            "refusing to touch it, even with --force"
        )
    if manifest is not None:
        missing = [name for name in manifest_files(manifest) if not (out / name).is_file()]
        same = {key: manifest.get(key) for key in request.as_dict()} == request.as_dict()
        if same and not missing and not force:
            return "unchanged", manifest
        if not force:
            if missing:
                problem = f"is incomplete (missing {', '.join(missing)})"
            else:
                old = {key: manifest.get(key) for key in request.as_dict()}
                problem = f"holds credentials for {old}, not {request.as_dict()}"
            raise CredentialsError(
                f"--out {out} {problem}; pass --force to replace ALL of it (new CA: every certificate and "
                "SuperNode key handed out before stops working, SuperNodes must be registered again)"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        manifest = generate(staging, request)
        existed = out.exists()
        if existed:
            retired = out.with_name(f".{out.name}-old-{os.getpid()}")
            out.rename(retired)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ("replaced" if existed else "created"), manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done or already there, 2 refused)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("deploy/credentials"), help="output folder")
    parser.add_argument("--supernodes", type=non_negative_int, default=2, help="SuperNode key pairs to make")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name or IP address clients use to reach the SuperLink and candidate service (repeatable); "
        "localhost and 127.0.0.1 are always included",
    )
    parser.add_argument("--days", type=positive_int, default=365, help="validity of the server certificates")
    parser.add_argument("--ca-days", type=positive_int, default=3650, help="validity of the CA certificate")
    parser.add_argument("--force", action="store_true", help="replace an existing, different set")
    args = parser.parse_args(argv)
    if args.supernodes < 0:
        parser.error(f"--supernodes must be >= 0, got {args.supernodes}")
    if args.days < 1 or args.ca_days < 1:
        parser.error(f"--days ({args.days}) and --ca-days ({args.ca_days}) must be >= 1")
    try:
        request = Request(args.supernodes, normalise_hosts(args.host), args.days, args.ca_days)
        outcome, manifest = ensure(args.out, request, args.force)
    except CredentialsError as error:
        print(f"credentials.py: error: {error}", file=sys.stderr)
        return 2
    if "0.0.0.0" in request.hosts or "::" in request.hosts:
        print(
            "credentials.py: note: 0.0.0.0 / :: are bind-all addresses, not names clients connect to; "
            "devices must reach the server under a --host DNS name or IP address in the certificate",
            file=sys.stderr,
        )
    summary = {"out": str(args.out), "outcome": outcome, **request.as_dict(), "ca": manifest["ca"]["sha256"]}
    print("RESULT " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
