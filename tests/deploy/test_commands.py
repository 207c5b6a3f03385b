"""The Flower command lines fedsim builds exist in the installed flwr (checked against each tool's --help)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.cli.flower_config import parse_superlink_connection

from fedsim.deploy.commands import (
    SuperLinkAddress,
    connection_toml,
    register_command,
    run_command,
    superexec_command,
    superlink_command,
    supernode_command,
)
from fedsim.deploy.pki import ServerCertificates
from fedsim.deploy.submit import parse_address
from fedsim.errors import ConfigError

BIN = Path(sys.executable).parent


def flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


def help_text(*tool: str) -> str:
    out = subprocess.run(
        [str(BIN / tool[0]), *tool[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    return re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)


def test_every_flag_is_one_the_installed_flower_tools_know():
    certs = ServerCertificates(Path("ca.pem"), Path("server.pem"), Path("server.key"))
    link = SuperLinkAddress("127.0.0.1", 9093)
    built = {
        ("flower-superlink",): superlink_command(host="127.0.0.1", port=9093, certs=certs)
        + superlink_command(host="0.0.0.0", port=1, certs=None, node_auth=False, isolation="process"),
        ("flower-supernode",): supernode_command(
            superlink=link, partition_id=0, num_partitions=2, runtime_port=9094, ca_cert=Path("ca.pem"),
            private_key=Path("k"),
        ) + supernode_command(
            superlink=link, partition_id=0, num_partitions=2, runtime_port=9094, ca_cert=None, private_key=None
        ),
        ("flower-superexec",): superexec_command(runtime_address="x:1")
        + superexec_command(runtime_address="x:1", insecure=False, ca_cert=Path("ca.pem")),
        ("flwr", "supernode", "register"): register_command(Path("k.pub"), "c")[3:],
        ("flwr", "run"): run_command(Path("."), "c", Path("rc.toml"))[2:],
    }  # fmt: skip
    for tool, argv in built.items():
        text = help_text(*tool)
        unknown = [f for f in flags(argv) if f not in text]
        assert not unknown, f"{' '.join(tool)} does not know {unknown}"


def test_the_connection_file_is_what_the_flwr_cli_reads():
    toml = pytest.importorskip("tomllib")
    tls = toml.loads(connection_toml("fedsim", SuperLinkAddress("127.0.0.1", 9093), Path("/c/ca.pem")))
    conn = parse_superlink_connection(tls["superlink"]["fedsim"], "fedsim")
    assert conn.address == "127.0.0.1:9093" and conn.root_certificates == "/c/ca.pem" and not conn.insecure
    assert tls["superlink"]["default"] == "fedsim"
    plain = toml.loads(connection_toml("x", "h:1", None))
    assert parse_superlink_connection(plain["superlink"]["x"], "x").insecure


def test_superlink_addresses():
    assert parse_address("10.0.0.2:9093") == SuperLinkAddress("10.0.0.2", 9093)
    assert str(parse_address("[::1]:9093")) == "[::1]:9093"
    for bad in ("superlink", "host:", ":9093", "host:99999", "host:port"):
        with pytest.raises(ConfigError, match="--superlink must be HOST:PORT"):
            parse_address(bad)
