"""TLS certificates and SuperNode authentication keys, made locally with ``cryptography`` (no openssl, no network).

A deployment needs a CA that SuperNodes and the ``flwr`` CLI trust (``ca.pem``), a server certificate for the
SuperLink signed by it (``server.pem`` + ``server.key``, valid for the host names it is reached by), and one
P-384 key pair per SuperNode: the private key in OpenSSH format (what ``flower-supernode
--auth-supernode-private-key`` reads) and the public key as an OpenSSH line (what ``flwr supernode register``
takes). Also usable on its own: ``python -m fedsim.deploy.pki OUT_DIR --hosts superlink --nodes 2``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsim.errors import ConfigError

VALID_DAYS = 365


@dataclass(frozen=True)
class ServerCertificates:
    """The files a TLS SuperLink needs (``--ssl-ca-certfile``, ``--ssl-certfile``, ``--ssl-keyfile``)."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's authentication key pair (private: OpenSSH PEM; public: one OpenSSH line)."""

    private: Path
    public: Path


def _write(path: Path, data: bytes, *, secret: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if secret:
        os.chmod(path, 0o600)
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def make_server_certificates(
    folder: Path, *, hosts: Sequence[str] = ("127.0.0.1", "localhost")
) -> ServerCertificates:
    """Write a fresh CA and a SuperLink certificate valid for ``hosts`` (IP addresses or DNS names)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedsim deployment CA"))
        .issuer_name(_name("fedsim deployment CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
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
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    private = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    _write(folder / "ca.key", ca_key.private_bytes(pem, private, none), secret=True)
    return ServerCertificates(
        ca_cert=_write(folder / "ca.pem", ca_cert.public_bytes(pem)),
        cert=_write(folder / "server.pem", cert.public_bytes(pem)),
        key=_write(folder / "server.key", key.private_bytes(pem, private, none), secret=True),
    )


def make_node_key(folder: Path, name: str) -> NodeKey:
    """Write one SuperNode key pair: ``<name>`` (private, OpenSSH) and ``<name>.pub`` (public, OpenSSH line)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return NodeKey(
        private=_write(folder / name, private, secret=True),
        public=_write(folder / f"{name}.pub", public + f" {name}\n".encode()),
    )


def check_server_certificates(certs: ServerCertificates) -> None:
    """Fail with one line naming the file when a certificate or key is missing, unreadable or mismatched.

    Raises:
        ConfigError: the first problem found.
    """
    loaded = {}
    for field, path, loader in (
        ("ca-cert", certs.ca_cert, x509.load_pem_x509_certificate),
        ("cert", certs.cert, x509.load_pem_x509_certificate),
        ("key", certs.key, lambda data: serialization.load_pem_private_key(data, password=None)),
    ):
        if not path.is_file():
            raise ConfigError(f"--{field}", "an existing PEM file", str(path))
        try:
            loaded[field] = loader(path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"--{field}", f"a valid PEM file ({exc})", str(path)) from None
    public_of_key = (
        loaded["key"]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    public_of_cert = (
        loaded["cert"]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    if public_of_key != public_of_cert:
        raise ConfigError("--key", f"the private key of the certificate {certs.cert}", str(certs.key))


def main(argv: Sequence[str] | None = None) -> None:
    """Make a deployment's certificates and N SuperNode keys in a folder (for Docker or real devices)."""
    parser = argparse.ArgumentParser(prog="python -m fedsim.deploy.pki", description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--hosts", nargs="+", default=["127.0.0.1", "localhost"], help="SuperLink names")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to make")
    parser.add_argument(
        "--shared", action="store_true", help="private keys readable by all (a volume shared by containers)"
    )
    args = parser.parse_args(argv)
    certs = make_server_certificates(args.folder, hosts=args.hosts)
    keys = [make_node_key(args.folder / "keys", f"supernode-{i}") for i in range(args.nodes)]
    if args.shared:  # the SuperLink's and SuperNodes' images run as users of their own
        for path in (certs.key, args.folder / "ca.key", *(k.private for k in keys)):
            os.chmod(path, 0o644)
    print(
        f"wrote {certs.ca_cert}, {certs.cert}, {certs.key} and {len(keys)} key pairs in {args.folder / 'keys'}"
    )


if __name__ == "__main__":
    main()
