"""The hook (issue 14, item 8): `[output] on_master` runs a command, no shell, once per
master, in order, one at a time, under a timeout, its outcome logged; a missing program,
a failing or a hanging hook never stops the daemon. Real processes throughout: small
Python scripts run by this interpreter, and the real `flatd run` in a subprocess."""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from flatd.config import ConfigError, parse_config
from flatd.daemon.hook import OUTPUT_TAIL_BYTES, PLACEHOLDERS, HookRunner, command_problems, expand
from tests.daemon import FlatdProcess, flat_sequence, wait_for, write_atomically
from tests.faults.helpers import set_config

pytestmark = pytest.mark.timeout(120)

# A hook that appends one JSON line per run (its argv, the FLATD_* environment, when it
# started and ended), optionally sleeping or failing as its first argument says.
RECORDER = """
import json, os, sys, time
log, mode, *args = sys.argv[1:]
started = time.time()
if mode == "sleep":
    time.sleep(0.3)
if mode == "hang":
    child = __import__("subprocess").Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(log + ".pids", "a") as pids:
        pids.write(f"{os.getpid()} {child.pid}\\n")
    time.sleep(60)
if mode == "chatty":
    sys.stdout.write("x" * 100_000 + "\\nthe last line\\n")
env = {k: v for k, v in os.environ.items() if k.startswith("FLATD_")}
with open(log, "a") as out:
    run = {"args": args, "env": env, "started": started, "ended": time.time()}
    out.write(json.dumps(run) + "\\n")
if mode == "fail":
    print("something went wrong", file=sys.stderr)
    sys.exit(3)
"""


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "hook.py"
    script.write_text(RECORDER)
    return script, tmp_path / "hook.log"


def runs(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def record(path: str, **qa: object) -> dict:
    return {
        "group": {"FILTER": "r'", "INSTRUME": "SIMCAM"},
        "path": path,
        "created_at": "2026-11-24T07:00:00Z",
        "n_frames": 7,
        "n_rejected": 1,
        "qa": {"flagged": False, "change_rms": 0.004, "masked_fraction": 0.0, **qa},
        "promoted": True,
    }


# -- the command and its placeholders ----------------------------------------------------------
def test_placeholders_are_filled_and_braces_kept() -> None:
    argv = ["/bin/notify", "--file={path}", "{group}", "{{literal}}", "{flagged}"]
    assert command_problems(argv) == []
    assert expand(argv, {"path": "/m/f.fits", "group": "gp_SIMCAM", "flagged": "true"}) == [
        "/bin/notify",
        "--file=/m/f.fits",
        "gp_SIMCAM",
        "{literal}",
        "true",
    ]


def test_check_config_names_unknown_placeholders_and_bad_commands() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"output": {"on_master": ["notify", "{pth}", "{path!r}", "{path", ""]}})
    problems = info.value.problems
    assert problems[0].startswith("output.on_master[1]: unknown placeholder {pth}; known: {path}")
    assert all(f"{{{name}}}" in problems[0] for name in PLACEHOLDERS)
    assert "output.on_master[2]: write {path} without a format or conversion" in problems
    assert any(p.startswith("output.on_master[3] = '{path': ") for p in problems)
    assert len(problems) == 3  # an empty argument is allowed; only the program must not be
    with pytest.raises(ConfigError, match=r"output.on_master\[0\] \(the program\) must not be"):
        parse_config({"output": {"on_master": [" ", "{path}"]}})
    with pytest.raises(ConfigError, match=r"output\.on_master must be a list of strings"):
        parse_config({"output": {"on_master": "notify {path}"}})
    with pytest.raises(ConfigError, match=r"output\.hook_timeout_seconds = 0\.0 is out of range"):
        parse_config({"output": {"hook_timeout_seconds": 0}})
    assert parse_config({}).output.on_master == ()


# -- the runner, on real processes ---------------------------------------------------------------
def test_hooks_run_one_at_a_time_in_order_with_arguments_and_environment(
    recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, log = recorder
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # the daemon's, not the hook's
    monkeypatch.setenv("FLATD_SITE", "kept")
    argv = [sys.executable, str(script), str(log), "sleep", "{path}", "{group}", "{n_frames}"]
    runner = HookRunner(argv, 20.0)
    runner.start()
    paths = [f"/m/flat_gp_SIMCAM_2026112{i}T173000.fits" for i in range(3)]
    for i, path in enumerate(paths):
        runner.submit(record(path, flagged=i == 1))  # returns at once: three queued
    wait_for(lambda: len(runs(log)) == 3, timeout=30, what="three hook runs")
    runner.stop()
    done = runs(log)
    assert [r["args"] for r in done] == [[p, "rp_SIMCAM", "7"] for p in paths]
    for earlier, later in itertools.pairwise(done):
        assert later["started"] >= earlier["ended"]  # one at a time
    env = done[1]["env"]
    assert env["FLATD_MASTER"] == env["FLATD_PATH"] == paths[1]
    assert env["FLATD_GROUP"] == "rp_SIMCAM" and env["FLATD_FILTER"] == "r'"
    assert env["FLATD_FLAGGED"] == "true" and done[0]["env"]["FLATD_FLAGGED"] == "false"
    assert json.loads(env["FLATD_QA_JSON"])["change_rms"] == 0.004
    assert json.loads(env["FLATD_RECORD_JSON"])["n_rejected"] == 1
    assert json.loads(env["FLATD_GROUP_JSON"]) == {"FILTER": "r'", "INSTRUME": "SIMCAM"}
    assert env["FLATD_SITE"] == "kept" and "NOTIFY_SOCKET" not in env


GATED = """
import pathlib, sys, time
folder, path = pathlib.Path(sys.argv[1]), sys.argv[2]
(folder / "started").write_text(path)
while not (folder / "gate").exists():
    time.sleep(0.01)
with open(folder / "ran", "a") as out:
    out.write(path + "\\n")
"""


def test_a_reload_turns_the_hook_on_and_off_between_two_masters(tmp_path: Path) -> None:
    runner = HookRunner((), 20.0)  # no hook at start: no worker
    runner.start()
    runner.submit(record("/m/before.fits"))
    runner.reconfigure([sys.executable, "-c", GATED, str(tmp_path), "{path}"], 20.0)
    runner.submit(record("/m/first.fits"))
    runner.submit(record("/m/second.fits"))  # waits behind the first
    wait_for(lambda: (tmp_path / "started").exists(), what="the first hook running")
    with capture_logs() as events:
        runner.reconfigure((), 20.0)  # off again: the running one finishes, the next is not run
        (tmp_path / "gate").touch()
        wait_for(lambda: any(e["event"] == "hook_not_run" for e in events), what="hook_not_run")
        runner.stop()
    assert (tmp_path / "ran").read_text().splitlines() == ["/m/first.fits"]
    [skipped] = [e for e in events if e["event"] == "hook_not_run"]
    assert skipped["master"] == "/m/second.fits"
    assert skipped["reason"] == "output.on_master removed"


def test_a_hanging_hook_is_killed_at_its_timeout_with_its_children(recorder) -> None:
    script, log = recorder
    runner = HookRunner([sys.executable, str(script), str(log), "hang"], 1.0)
    with capture_logs() as events:
        started = time.monotonic()
        result = runner.run(record("/m/flat_r_1.fits"))
        took = time.monotonic() - started
    assert result.outcome == "timeout" and result.returncode is not None
    assert took < 10, took  # 1 s, then SIGTERM to the hook's process group
    [timeout] = [e for e in events if e["event"] == "hook_timeout"]
    assert timeout["log_level"] == "error" and timeout["master"] == "/m/flat_r_1.fits"
    pids = [int(p) for p in Path(f"{log}.pids").read_text().split()]
    for pid in pids:  # the hook and the child it started are both gone
        wait_for(lambda pid=pid: not _alive(pid), timeout=5, what=f"pid {pid} gone")


def test_a_failing_hook_is_logged_with_its_status_and_output(recorder) -> None:
    script, log = recorder
    runner = HookRunner([sys.executable, str(script), str(log), "fail"], 20.0)
    with capture_logs() as events:
        result = runner.run(record("/m/flat_r_1.fits"))
    assert (result.outcome, result.returncode) == ("failed", 3)
    [failed] = [e for e in events if e["event"] == "hook_failed"]
    assert failed["returncode"] == 3 and failed["output"] == "something went wrong"
    assert failed["log_level"] == "warning"


def test_output_is_kept_to_its_tail(recorder) -> None:
    script, log = recorder
    result = HookRunner([sys.executable, str(script), str(log), "chatty"], 20.0).run(
        record("/m/flat_r_1.fits")
    )
    assert result.outcome == "ok"
    assert result.output.endswith("the last line") and result.output.startswith("…")
    assert len(result.output.encode()) <= OUTPUT_TAIL_BYTES + len("…".encode())


def test_a_missing_program_is_one_clear_error(tmp_path: Path) -> None:
    runner = HookRunner([str(tmp_path / "no-such-notifier"), "{path}"], 5.0)
    with capture_logs() as events:
        result = runner.run(record("/m/flat_r_1.fits"))
    assert result.outcome == "error"
    assert [(e["event"], e["log_level"], e["reason"]) for e in events] == [
        ("hook_not_started", "error", f"no such program: {tmp_path / 'no-such-notifier'}")
    ]


def test_masters_waiting_at_stop_are_named_not_run(recorder) -> None:
    script, log = recorder
    runner = HookRunner([sys.executable, str(script), str(log), "sleep", "{path}"], 20.0)
    runner.start()
    with capture_logs() as events:
        for i in range(5):
            runner.submit(record(f"/m/flat_r_{i}.fits"))
        wait_for(lambda: runs(log), timeout=30, what="the first hook run")
        runner.stop()
    ran = [r["args"][0] for r in runs(log)]
    not_run = [e["master"] for e in events if e["event"] == "hook_not_run"]
    assert ran and not_run
    assert sorted(ran + not_run) == [f"/m/flat_r_{i}.fits" for i in range(5)]
    assert ran == [f"/m/flat_r_{i}.fits" for i in range(len(ran))]  # in order, from the first


# -- the daemon --------------------------------------------------------------------------------
def _write_sequence(flatd: FlatdProcess, prefix: str, seed: int, day: int) -> None:
    seq = flat_sequence(3, seed=seed, start=datetime(2026, 11, day, 17, 30))
    for i in range(3):
        write_atomically(flatd.incoming / f"{prefix}_{i:03d}.fits", seq.frames[i], seq.headers[i])


@pytest.mark.slow
def test_the_daemon_runs_the_hook_once_per_master_in_order(tmp_path: Path, recorder) -> None:
    script, log = recorder
    flatd = FlatdProcess(tmp_path, quiet=0.5, min_frames=3)
    command = [sys.executable, str(script), str(log), "quick", "{path}", "{group}", "{flagged}"]
    set_config(flatd, "output", on_master=command)
    try:
        flatd.start()
        _write_sequence(flatd, "a", seed=1, day=23)
        flatd.wait_event("master_written")
        _write_sequence(flatd, "b", seed=2, day=24)
        written = flatd.wait_event("master_written", count=2)
        flatd.wait_event("hook_done", count=2)
        assert flatd.stop() == 0
    finally:
        flatd.kill()
    done = runs(log)
    assert [r["args"] for r in done] == [
        [w["path"], "r_SIMCAM_1_1", "true" if w["qa"]["flagged"] else "false"] for w in written
    ]
    assert [Path(r["args"][0]).name for r in done] == [
        "flat_r_SIMCAM_1_1_20261123T173000.fits",
        "flat_r_SIMCAM_1_1_20261124T173000.fits",
    ]
    assert len(flatd.named("hook_done")) == 2  # once per master, never again


@pytest.mark.slow
def test_a_hanging_hook_never_holds_up_the_daemon(tmp_path: Path, recorder) -> None:
    script, log = recorder
    flatd = FlatdProcess(tmp_path, quiet=0.5, min_frames=3)
    set_config(flatd, "output", on_master=[sys.executable, str(script), str(log), "hang"])
    set_config(flatd, "output", hook_timeout_seconds=1.5)
    try:
        flatd.start()
        _write_sequence(flatd, "a", seed=1, day=23)
        flatd.wait_event("master_written")
        _write_sequence(flatd, "b", seed=2, day=24)  # combined while the first hook hangs
        flatd.wait_event("master_written", count=2)
        flatd.wait_event("hook_timeout", count=2, timeout=40)
        assert flatd.proc.poll() is None
        assert flatd.stop() == 0
    finally:
        flatd.kill()
    for pid in (int(p) for p in Path(f"{log}.pids").read_text().split()):
        wait_for(lambda pid=pid: not _alive(pid), timeout=5, what=f"pid {pid} gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent, the hook, has not reaped it yet)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
