"""What a reload may change (`flatd.daemon.reload`), the config file read again
(`config.reload_config`), and the signal-safe wake-up the service waits on
(`flatd.daemon.signals`). The real daemon's reloads are in tests/faults/test_signals.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from flatd.config import ConfigError, differences, load_config, parse_config, reload_config
from flatd.daemon.reload import RESTART_ONLY, plan_reload, restart_reason
from flatd.daemon.signals import Wakeup, install

RUNNING = """
[watch]
directories = ["incoming"]
[sequence]
quiet_seconds = 300
[output]
directory = "masters"
"""


def loaded(tmp_path: Path, text: str) -> tuple:
    """The running config (RUNNING) and `text` read from the same file, as a reload does."""
    path = tmp_path / "config.toml"
    path.write_text(RUNNING)
    running = load_config(path)
    path.write_text(text)
    return running, reload_config(running)


def test_differences_name_the_changed_keys_in_the_schemas_order() -> None:
    old = parse_config({"sequence": {"quiet_seconds": 300}})
    new = parse_config({"qa": {"max_change": 0.05}, "sequence": {"quiet_seconds": 1}})
    assert differences(old, new) == ["sequence.quiet_seconds", "qa.max_change"]
    assert differences(old, old) == []


def test_a_reload_applies_what_runs_next_and_keeps_what_is_fixed_at_start(tmp_path) -> None:
    running, new = loaded(
        tmp_path,
        RUNNING.replace(
            "quiet_seconds = 300", "quiet_seconds = 1\nmin_frames = 3\nkeep_days = 2"
        ).replace('directory = "masters"', 'directory = "elsewhere"\npreview = false')
        + '[combine]\nmethod = "median"\n[frames]\ngroup_by = ["FILTER"]\n'
        + '[log]\nlevel = "debug"\n',
    )
    plan = plan_reload(running, new)
    assert plan.changed == [
        "sequence.quiet_seconds",
        "sequence.min_frames",
        "combine.method",
        "output.preview",
        "log.level",
    ]
    assert list(plan.needs_restart) == [
        "frames.group_by",
        "sequence.keep_days",
        "output.directory",
    ]
    config = plan.config
    assert (config.sequence.quiet_seconds, config.sequence.min_frames) == (1.0, 3)
    assert config.combine.method == "median" and config.output.preview is False
    # kept as they run: the lock is on the output directory, the index was built with these
    assert config.output.directory == running.output.directory == tmp_path / "masters"
    assert config.sequence.keep_days == running.sequence.keep_days
    assert config.frames == running.frames
    message = plan.restart_message()
    assert message.startswith("restart flatd to change frames.group_by (")
    assert "output.directory (the daemon's lock is on it)" in message
    assert message.endswith("the rest of the file was applied")


def test_every_key_fixed_at_start_has_a_reason() -> None:
    assert restart_reason("status.file") == RESTART_ONLY["status.file"]
    assert restart_reason("frames.date_keywords") == RESTART_ONLY["frames.*"]
    assert restart_reason("sequence.quiet_seconds") == ""
    assert restart_reason("calibrate.bias") == ""
    sections = {key.split(".")[0] for key in RESTART_ONLY}
    assert sections <= set(parse_config({}).to_dict())


def test_a_mix_of_kept_and_new_keys_that_does_not_hold_together_is_refused(tmp_path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[calibrate]\nraw = "calibrate"\noverscan = true\n')
    running = load_config(path)
    path.write_text('[calibrate]\nraw = "reject"\noverscan = false\n')
    with pytest.raises(ConfigError) as refused:
        plan_reload(running, reload_config(running))
    [problem] = refused.value.problems
    assert problem.startswith('calibrate.raw = "calibrate" needs calibrate.overscan = true')
    assert problem.endswith("(with calibrate.raw kept until a restart)")


def test_reload_config_reads_the_file_again_with_every_problem(tmp_path) -> None:
    running, new = loaded(tmp_path, RUNNING.replace('"incoming"', '"other"'))
    assert new.watch.directories == (tmp_path / "other",)  # resolved like at start
    assert new.source == running.source
    (tmp_path / "config.toml").write_text("[sequence]\nquiet_seconds = -1\nmin_frame = 2\n")
    with pytest.raises(ConfigError) as broken:
        reload_config(running)
    assert len(broken.value.problems) == 2
    (tmp_path / "config.toml").unlink()
    with pytest.raises(ConfigError, match="file not found"):
        reload_config(running)


def test_a_daemon_started_on_the_defaults_has_no_file_to_read_again() -> None:
    with pytest.raises(ConfigError, match="restart it with --config"):
        reload_config(load_config(None))


# -- the wake-up the service's thread waits on --------------------------------------------
def test_wakeup_waits_for_its_timeout_or_a_wake_from_another_thread() -> None:
    wakeup = Wakeup()
    try:
        started = time.monotonic()
        assert wakeup.wait(0.05) is False
        assert time.monotonic() - started >= 0.04
        threading.Timer(0.05, wakeup.wake).start()
        started = time.monotonic()
        assert wakeup.wait(10.0) is True
        assert time.monotonic() - started < 5.0
        for _ in range(100_000):  # more wakes than the pipe holds: none blocks
            wakeup.wake()
        assert wakeup.wait(0) is True and wakeup.wait(0) is False  # drained at once
    finally:
        wakeup.close()
    wakeup.wake()  # closed: nothing happens, nothing is raised


def test_a_signal_handler_that_only_wakes_ends_the_wait_at_once() -> None:
    wakeup = Wakeup()
    asked: list[int] = []

    def handler(signum: int, frame: object) -> None:
        asked.append(signum)
        wakeup.wake()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        started = time.monotonic()
        assert wakeup.wait(10.0) is True  # select is resumed after the handler: woken
        assert time.monotonic() - started < 5.0
        assert asked == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)
        wakeup.close()


def test_a_signal_taken_by_another_thread_still_wakes_the_main_thread_at_once() -> None:
    """The kernel may hand SIGTERM to any thread (the engine's, the observer's); Python
    runs the handler only when the main thread next runs bytecode, which a main thread
    asleep in select would not do before its timeout — unless the signal itself writes
    to the pipe it waits on (Python's wakeup fd)."""
    wakeup = Wakeup()
    asked: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    install(asked.append, lambda: asked.append(0), wakeup)
    try:

        def signal_this_thread() -> None:  # a thread other than the main one takes it
            signal.pthread_kill(threading.get_ident(), signal.SIGHUP)

        threading.Timer(0.05, signal_this_thread).start()
        started = time.monotonic()
        assert wakeup.wait(10.0) is True
        assert time.monotonic() - started < 2.0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        wakeup.close()
    assert signal.set_wakeup_fd(-1) == -1  # closing the pipe also unset it
