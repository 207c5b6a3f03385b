"""Certificates and SuperNode keys: checked with cryptography's verifier and Flower's own key loaders."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from fedsim.deploy.pki import (
    ServerCertificates,
    check_server_certificates,
    make_node_key,
    make_server_certificates,
)
from fedsim.errors import ConfigError


def test_the_server_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path):
    certs = make_server_certificates(tmp_path, hosts=("127.0.0.1", "superlink"))
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the signature or issuer does not match
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["superlink"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(certs.key.stat().st_mode) == 0o600
    check_server_certificates(certs)  # no error for a matching set


def test_node_keys_load_the_way_flower_loads_them(tmp_path):
    key = make_node_key(tmp_path, "supernode-0")
    public = try_load_public_key(key.public)  # what `flwr supernode register` does (P-384 NIST EC, OpenSSH)
    private = load_ssh_private_key(key.private.read_bytes(), password=None)  # what flower-supernode does
    assert public_key_to_bytes(private.public_key()) == public
    other = make_node_key(tmp_path, "supernode-1")
    assert try_load_public_key(other.public) != public


def test_bad_certificate_files_fail_with_one_line_naming_the_file(tmp_path):
    certs = make_server_certificates(tmp_path / "a")
    other = make_server_certificates(tmp_path / "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    cases = [
        (
            ServerCertificates(certs.ca_cert, tmp_path / "missing.pem", certs.key),
            "--cert must be an existing PEM",
        ),
        (ServerCertificates(certs.ca_cert, garbage, certs.key), "--cert must be a valid PEM file"),
        (ServerCertificates(certs.ca_cert, certs.cert, other.key), "--key must be the private key of"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            check_server_certificates(bad)
        assert "\n" not in str(err.value)
