"""Docs that run (issue 17, item 8): every command in README.md and config/README.md, as written.

Commands are taken from the ```bash blocks and from inline code spans that start with
``snakemake``, ``bandersnake-batch`` or ``make`` (an environment assignment may precede them).
They run in a folder laid out as the project root (``profiles/`` beside it) with the example paths
mapped onto small raw trees: ``/nas/Observations`` → a SPIRIT2 demo-night tree, ``/data/astep`` and
``/path/to/data`` → an ASTEP date tree, ``/home/me/...`` → the shipped files. Snakemake commands
run as dry runs (``-n``: the command parses, the configuration checks pass and the jobs are
planned), ``bandersnake-batch`` with ``--dry-run``, ``make`` with ``-n``. Before this test,
``snakemake --cores 16 --config raw_root=… results/…/`` failed: ``--config`` swallowed the target.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DOCS = ("README.md", "config/README.md")
STARTS = ("snakemake", "bandersnake-batch", "make")


def _strip_comment(line):
    out, quote = [], None
    for i, ch in enumerate(line):
        if ch in "'\"" and (quote is None or quote == ch):
            quote = None if quote == ch else ch
        if ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).strip()


def doc_commands(text):
    """Shell commands of a Markdown text: ```bash blocks (with ``\\`` continuations) and inline
    code spans starting with one of :data:`STARTS` (after optional ``VAR=value`` assignments)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [c for c in (_strip_comment(line) for line in joined.splitlines()) if c]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`\n]+)`", prose.replace("\n", " ")):
        words = span.split()
        while words and re.match(r"^[A-Z_]+=\S+$", words[0]):
            words = words[1:]
        if words and words[0] in STARTS and len(span.split()) > 1:
            commands.append(span.strip())
    return commands


def _all_commands():
    out = []
    for doc in DOCS:
        for cmd in doc_commands((ROOT / doc).read_text()):
            if cmd not in [c for _, c in out]:
                out.append((doc, cmd))
    return out


COMMANDS = _all_commands()


def test_commands_found():
    """The extraction sees the commands the issue names (so the runs below are not vacuous)."""
    text = [c for _, c in COMMANDS]
    assert any(c.startswith("snakemake --cores 16 results/SPIRIT2_20251215/ --config raw_root=") for c in text)
    assert any("bandersnake-batch" in c for c in text) and any(c.startswith("make demo") for c in text)
    assert len(text) >= 10, text


@pytest.fixture(scope="module")
def project_like(tmp_path_factory):
    """A run folder with the project's profiles/ and small raw trees for the example paths."""
    root = tmp_path_factory.mktemp("docs")
    (root / "profiles").symlink_to(ROOT / "profiles")
    for demo in (root / "nas" / "SPIRIT2" / "images" / "20251215",  # /nas/Observations
                 root / "demo" / "raw" / "SPIRIT2" / "images" / "20251215"):  # `make demo`'s night
        demo.mkdir(parents=True)
        (demo / "SIM-1b_0001.fits").write_bytes(b"")
    astep = root / "astep" / "2025-04-03" / "2025-04-03-CAMS"
    astep.mkdir(parents=True)
    (astep / "2025-04-03_01.00.00_SCIENCE.fits").write_bytes(b"")
    (root / "ssd").mkdir()
    return root


def _runnable(cmd, root):
    """The documented command as a dry run in ``root`` with the example paths mapped."""
    mapping = {"/nas/Observations": str(root / "nas"), "/data/astep": str(root / "astep"),
               "/path/to/data": str(root / "astep"), "/home/me/targets.yaml": str(ROOT / "config" / "targets.yaml"),
               "/home/me/nights": str(ROOT / "config" / "nights"), "/ssd/$USER": str(root / "ssd"),
               "/path/to/bandersnake/Snakefile": str(ROOT / "Snakefile"), "<night>": "SPIRIT2_20251215"}
    for old, new in mapping.items():
        cmd = cmd.replace(old, new)
    words = shlex.split(cmd)
    env_words = []
    while words and re.match(r"^[A-Z_]+=", words[0]):
        env_words.append(words.pop(0))
    exe = words[0]
    bindir = Path(sys.executable).parent
    if exe == "snakemake":
        words = [str(bindir / "snakemake"), "-s", str(ROOT / "Snakefile"), "-n"] + words[1:]
    elif exe == "bandersnake-batch":
        words = [str(bindir / "bandersnake-batch"), "--dry-run"] + words[1:]
    elif exe == "make":
        words = ["make", "-n", "-C", str(ROOT)] + words[1:]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "workflow"), PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    env.update(w.split("=", 1) for w in env_words)
    return words, env


@pytest.mark.slow
@pytest.mark.parametrize("doc, cmd", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_runs(doc, cmd, project_like):
    if cmd.startswith("source "):
        assert (ROOT / "Makefile").read_text().count("venv") > 0  # made by `make setup`
        return
    if "my_templates.yaml" in cmd or "<name>" in cmd:
        # The templates stage's examples need the user's own template file (issue 21's tests
        # build one); the placeholder is deliberate, not a command to run as written.
        pytest.skip("needs the user's templates configuration (my_templates.yaml / <name>)")
    if "--report" in cmd:
        # Needs a built night: tests/test_report.py builds one and runs this command on it.
        assert "--report" in (ROOT / "tests" / "test_report.py").read_text()
        return
    words, env = _runnable(cmd, project_like)
    proc = subprocess.run(words, cwd=project_like, capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{doc}: `{cmd}` failed ({proc.returncode}):\n{out[-3000:]}"
    assert "Traceback" not in out
