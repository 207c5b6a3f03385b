"""Register SuperNode public keys with a SuperLink (``flwr supernode register``), so those SuperNodes may connect.

With ``--enable-supernode-auth`` a SuperLink refuses every SuperNode whose public key was not registered through
its Control API. Used by ``fedsim deploy --local`` and, as ``python -m fedsim.deploy.register``, by the Docker
compose file's one-shot ``register`` service.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedsim.deploy.commands import register_command

REGISTER_TIMEOUT_S = 60.0


def register_key(public_key: Path, *, connection: str, env: Mapping[str, str], cwd: Path) -> int:
    """Register one public key (an OpenSSH line) under the ``flwr`` connection; return the node id it gets.

    Raises:
        DeployError: the SuperLink refused it or could not be reached.
    """
    from fedsim.errors import DeployError

    out = subprocess.run(
        register_command(public_key, connection), env=dict(env), cwd=cwd,
        capture_output=True, text=True, timeout=REGISTER_TIMEOUT_S,
    )  # fmt: skip
    try:
        return int(json.loads(out.stdout[out.stdout.index("{") :])["node-id"])
    except (ValueError, KeyError):
        lines = [l for l in (out.stdout + out.stderr).splitlines() if l.strip()]
        raise DeployError(
            f"flwr supernode register {public_key} failed (code {out.returncode}): {lines[-1] if lines else ''}"
        ) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Register public keys with the SuperLink at ``--superlink`` (TLS with ``--root-certificates``)."""
    import os

    from fedsim.deploy.submit import CONNECTION, deployment_env, parse_address, write_connection

    parser = argparse.ArgumentParser(prog="python -m fedsim.deploy.register", description=main.__doc__)
    parser.add_argument("keys", nargs="+", type=Path, help="public key files (OpenSSH lines)")
    parser.add_argument("--superlink", required=True, help="HOST:PORT")
    parser.add_argument("--root-certificates", type=Path, required=True, help="the SuperLink's CA (PEM)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        write_connection(Path(home), parse_address(args.superlink), args.root_certificates.resolve())
        env = deployment_env(Path(home))
        for key in args.keys:
            node = register_key(key, connection=CONNECTION, env=env, cwd=Path(os.getcwd()))
            print(f"registered {key} as SuperNode {node}", flush=True)


if __name__ == "__main__":
    main()
