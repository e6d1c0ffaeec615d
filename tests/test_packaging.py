"""The conda environment for --use-conda users lists the same packages as pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement):
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _spec(requirement):
    return requirement.strip()[len(_name(requirement)):].strip()


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_reqs = {_name(r): _spec(r) for r in project["dependencies"]}
    env = yaml.safe_load((ROOT / "envs" / "bandersnake.yaml").read_text())
    conda_reqs = {_name(d): _spec(d) for d in env["dependencies"] if isinstance(d, str)}
    conda_reqs.pop("python")
    assert conda_reqs == pip_reqs


def test_python_version_agrees():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "envs" / "bandersnake.yaml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert project["requires-python"].lstrip(">=") == python.split(">=")[1]
