"""pyproject.toml asks for ranges (a library must not replace a user's CUDA torch); constraints.txt
pins every one of them for CI and the README's installs, torch as the CPU build 2.13.0."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """The normalised name of a requirement: ``llama_cpp_python[server]>=0.3`` → ``llama-cpp-python``."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    return [*project["dependencies"], *(r for extra in extras for r in extra)]


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+]+", pin) for pin in pins), pins
    return {_name(pin): pin.split("==")[1] for pin in pins}


def test_torch_is_a_range_in_pyproject_and_the_cpu_wheel_in_the_constraints() -> None:
    (torch,) = [r for r in _requirements() if _name(r) == "torch"]
    assert "==" not in torch and ">=" in torch and "<" in torch, torch
    assert _pins()["torch"] == "2.13.0"


def test_every_requirement_is_a_range_and_pinned_in_the_constraints() -> None:
    pins = _pins()
    for requirement in _requirements():
        assert "==" not in requirement, requirement
        assert _name(requirement) in pins, requirement
    assert "lantern-erc" not in pins  # the project itself is installed from the checkout
