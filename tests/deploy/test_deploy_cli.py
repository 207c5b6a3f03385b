"""``fedsim deploy`` refuses what cannot work with one line and exit code 2, before anything starts."""

from __future__ import annotations

import socket

from deploy_helpers import TINY

from fedsim.deploy.pki import make_server_certificates
from tests.cli_helpers import run_cli as fedsim  # in process: nothing here needs a process of its own


def one_error_line(out) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_a_superlink_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = fedsim("deploy", str(TINY), "--local", "2", "--port", str(port), "-o", str(tmp_path))
    line = one_error_line(out)
    assert (
        line == f"fedsim: error: flower-superlink cannot start: 127.0.0.1:{port} is already in use (--port)"
    )
    assert not list(tmp_path.iterdir())  # nothing was made


def test_a_bad_certificate_is_one_clear_line_naming_the_file(tmp_path):
    certs = make_server_certificates(tmp_path / "certs")
    certs.cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    out = fedsim(
        "deploy", str(TINY), "--local", "2", "--certs", str(tmp_path / "certs"), "-o", str(tmp_path / "r")
    )
    line = one_error_line(out)
    assert line.startswith("fedsim: error: --cert must be a valid PEM file") and str(certs.cert) in line


def test_options_that_do_not_fit_together(tmp_path):
    cases = [
        ((), "--local/--superlink must be exactly one of them"),
        (("--local", "2", "--superlink", "h:1"), "--local/--superlink must be exactly one of them"),
        (
            ("--local", "3"),
            "--local must be a number of SuperNodes between 1 and population.clients (2). Got 3.",
        ),
        (("--superlink", "h:1"), "--root-certificates must be the SuperLink's CA certificate"),
        (("--superlink", "nohost"), "--superlink must be HOST:PORT"),
        (
            ("--local", "2", "--insecure", "--certs", str(tmp_path)),
            "--certs must be left out with --insecure",
        ),
    ]
    for args, message in cases:
        line = one_error_line(fedsim("deploy", str(TINY), *args, "-o", str(tmp_path / "r")))
        assert message in line, line


def test_the_help_says_tls_is_on_and_insecure_must_be_asked_for():
    out = fedsim("deploy", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "TLS and SuperNode authentication on" in text and "--insecure" in text
