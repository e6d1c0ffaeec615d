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


def _rules():
    """(rule name, script file name) of every rule and checkpoint in rules/*.smk."""
    found = []
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            m = re.match(r"(?:rule|checkpoint) (\w+):", line)
            if m:
                rule = m.group(1)
                found.append([rule, None])
            m = re.match(r'\s+"\.\./workflow/scripts/(\w+\.py)"', line)
            if m and rule:
                found[-1][1] = m.group(1)
    return found


def test_architecture_map_lists_every_rule_with_its_script():
    """docs/ARCHITECTURE.md's map names every rule, the script it runs and that script's entry point."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| [\w ]+ \| `(\w+)`[^\n]*$", text, re.M)}
    for rule, script in _rules():
        if rule == "all":
            continue
        assert rule in rows, f"rule {rule} missing from the map in docs/ARCHITECTURE.md"
        if script:
            assert f"| {script} |" in rows[rule], f"map row of {rule} does not name {script}"


def test_rule_scripts_import_stage_entry_points():
    """Rule scripts are thin: one import line per stage entry point, each name exported by the stage's
    package (``from bandersnake.<stage> import name``) and importable."""
    import importlib

    for script in sorted((ROOT / "workflow" / "scripts").glob("*.py")):
        for m in re.finditer(r"^from (bandersnake[\w.]*) import (.+)$", script.read_text(), re.M):
            module = importlib.import_module(m.group(1))
            assert m.group(1).count(".") == 1, f"{script.name}: import from a stage package, not {m.group(1)}"
            for name in (n.strip() for n in m.group(2).split(",")):
                assert hasattr(module, name), f"{script.name}: {m.group(1)} has no entry point {name}"
