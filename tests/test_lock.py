"""requirements.lock pins the whole dependency set: it covers pyproject.toml, agrees with its ranges, is what this
environment runs, and is what the Docker images are built from (so a new upstream release cannot change a run)."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"requirements.lock: {line!r} must be an exact pin (name==version)"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return [Requirement(r) for r in reqs]


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = lock()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock (run `make lock`)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"


def test_this_environment_runs_the_locked_versions():
    """What CI installs is the lock, exactly (a local label such as +cpu aside)."""
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}
    wrong = {
        name: str(installed[name])
        for name, version in lock().items()
        if name in installed and installed[name].public != version.public
    }
    assert not wrong, f"installed versions differ from requirements.lock: {wrong} (run `make test` to resync)"
    for req in declared():
        if not req.marker or req.marker.evaluate({"extra": "test"}):
            assert canonicalize_name(req.name) in installed, f"{req.name} is not installed"


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_docker_images_use_the_locked_flwr(dockerfile):
    flwr = lock()["flwr"]
    for image in re.findall(r"^FROM (\S+)", dockerfile.read_text(), flags=re.M):
        repo, _, tag = image.partition(":")
        assert repo.startswith("flwr/") and Version(tag) == flwr, f"{dockerfile.name}: FROM {image}, lock has {flwr}"
    if dockerfile.name == "fedsim.Dockerfile":
        assert "-c requirements.lock" in dockerfile.read_text()
