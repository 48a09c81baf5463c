"""The README's two set-up commands, run verbatim in a fresh copy of the repository.

The copy holds what a fresh checkout of the working tree holds (`git ls-files -co
--exclude-standard`: tracked and new files, nothing ignored). Its `.venv` is a symlink to
this checkout's, already set up, so the test needs no network and takes seconds rather than
minutes; `PYTHONPATH` makes the copy's own code the code that runs. `make demo` is run
as the README writes it and must exit 0 with three masters and a `stopped` daemon.
`make test` is what is running this very test, so it is checked with `make -n` (the target
exists and would run ruff and pytest) instead of recursing into the suite.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RECURSION_GUARD = "FLATD_TEST_DEMO_RUNNING"


def readme_setup_commands(readme: Path) -> list[str]:
    """The command lines of the one fenced block in the README that runs `make demo`
    (comments and blank lines dropped)."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", readme.read_text("utf-8"), re.M | re.S)
    demo_blocks = [b for b in blocks if re.search(r"^\s*make demo\b", b, re.M)]
    assert len(demo_blocks) == 1, "the README must have exactly one block that runs make demo"
    lines = [line.split("#", 1)[0].strip() for line in demo_blocks[0].splitlines()]
    return [line for line in lines if line]


def test_readme_has_exactly_the_two_setup_commands() -> None:
    assert readme_setup_commands(ROOT / "README.md") == ["make demo", "make test"]


def _fresh_copy(destination: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (destination / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    # make must see the shared venv as set up, never reinstall it from the copy
    stamp = (ROOT / ".venv" / ".installed").stat().st_mtime
    for prerequisite in ("pyproject.toml", "flatd/engine/_kernel.c"):  # the Makefile's stamp rule
        os.utime(destination / prerequisite, (stamp - 1, stamp - 1))
    return destination


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.extend(v for k, v in attrs if k == "src" and v)


@pytest.mark.timeout(180)
def test_readme_commands_work_in_a_fresh_checkout(tmp_path: Path) -> None:
    if os.environ.get(RECURSION_GUARD):
        pytest.skip("already inside the demo test")
    for tool in ("git", "make"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not (ROOT / ".git").exists() or not (ROOT / ".venv" / ".installed").exists():
        pytest.skip("needs a git checkout whose .venv is set up (make test does that)")
    clone = _fresh_copy(tmp_path / "flatd")
    env = {**os.environ, "PYTHONPATH": str(clone), RECURSION_GUARD: "1", "NO_COLOR": "1"}
    env.pop("FLATD_CONFIG", None)

    which = subprocess.run(
        [".venv/bin/python", "-c", "import flatd; print(flatd.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(which.stdout.strip()).resolve().is_relative_to(clone.resolve())

    for line in readme_setup_commands(clone / "README.md"):
        if shlex.split(line)[:2] == ["make", "test"]:
            dry = subprocess.run(
                ["make", "-n", *shlex.split(line)[1:]],
                cwd=clone,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert dry.returncode == 0, dry.stderr
            assert "pytest" in dry.stdout and "ruff check" in dry.stdout
            assert "pip install" not in dry.stdout, "the shared venv would be reinstalled"
            continue
        run = subprocess.run(
            line,
            shell=True,
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, f"{line!r} exited {run.returncode}:\n{output[-6000:]}"
        assert "pip install" not in output, "the shared venv was reinstalled"

    demo = clone / "demo-run"
    masters = sorted((demo / "masters").glob("flat_*.fits"))
    assert len(masters) == 3, output[-6000:]
    assert {m.name.split("_")[1] for m in masters} == {"g", "r", "i"}
    status = json.loads((demo / "status.json").read_text())
    assert status["daemon"]["state"] == "stopped"
    assert [e for e in status["errors"] if "broken_000.fits" in e["path"]], "broken file reported"
    assert "flatd stopped" in output or "flatd running" in output  # `flatd status` was printed
    assert "index.html" in output and "files to open" in output

    page = demo / "index.html"
    text = page.read_text("utf-8")
    assert "stopped" in text
    parser = _Images()
    parser.feed(text)
    for src in parser.sources:
        assert (page.parent / src).is_file(), src
