"""The daemon's signals, with the real `flatd run`.

Case 9: SIGTERM in the middle of a combination: exit 0 within seconds, status `stopped`,
no partial master (the combination is abandoned, not waited for). SIGHUP reloads the
config file (issue 14, item 6): a new quiet period applies to a group already waiting,
systemd hears RELOADING=1 then READY=1, a broken file is refused whole and the daemon runs
on, keys fixed at start wait for a restart, new watched directories are scanned and old
ones forgotten, a new log level applies.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flatd.daemon.lock import is_lock_file
from tests.daemon import DEFAULT_CONFIG, FlatdProcess, NotifySocket, flat_sequence, wait_for
from tests.faults.helpers import flat_bytes, masters_in, set_config

pytestmark = pytest.mark.timeout(90)

N_FRAMES = 16  # 256 MB of input in bands of a few MB: the combination takes 0.3 s or more,
# and the signal leaves within a millisecond of `combine_started` being logged.


def test_sigterm_during_a_combination_stops_cleanly_without_a_partial_master(daemon):
    flatd = daemon(quiet=0.5, min_frames=3)
    set_config(flatd, "sequence", gap_minutes=600)
    flatd.config.write_text(flatd.config.read_text() + "[combine]\nmem_limit_mb = 64\n")
    flatd.start()
    sent: list[float] = []

    def terminate(_event: dict) -> None:
        flatd.proc.send_signal(signal.SIGTERM)
        sent.append(time.monotonic())

    flatd.on_event("combine_started", terminate)
    seq = flat_sequence(N_FRAMES, seed=71, shape=(2048, 2048), stars=False, cosmic_rays=False)
    for i in range(N_FRAMES):
        (flatd.incoming / f"r_{i:03d}.fits").write_bytes(flat_bytes(seq.frames[i], seq.headers[i]))
    assert flatd.proc.wait(60) == 0
    assert sent, "the daemon stopped without logging combine_started"
    took = time.monotonic() - sent[0]
    print(f"stopped {took:.3f} s after SIGTERM")
    assert took < 5.0, f"took {took:.1f} s to stop"
    assert flatd.status()["daemon"]["state"] == "stopped"
    flatd.wait_event("stopped", timeout=5)  # the last line: the reader has parsed them all
    assert flatd.named("signal_received", signal="SIGTERM")
    # abandoned, not half-written: no master, no temporary
    assert flatd.named("combine_abandoned"), "the combination ended before the signal"
    assert not flatd.named("master_written")
    assert masters_in(flatd.masters) == []
    assert [p for p in flatd.masters.rglob("*") if p.is_file() and not is_lock_file(p)] == []


def write_config(flatd: FlatdProcess, *, quiet: float, min_frames: int = 3, **tables: str) -> None:
    """The harness's config again, with `quiet` and `min_frames`, and lines added to its
    tables (`output='on_master = [...]'`)."""
    flatd.config.write_text(
        DEFAULT_CONFIG.format(quiet=quiet, min_frames=min_frames, watch="", extra="")
    )
    for table, lines in tables.items():
        text = flatd.config.read_text()
        flatd.config.write_text(text.replace(f"[{table}]\n", f"[{table}]\n{lines}\n", 1))


def write_sequence(directory: Path, n: int, filter_name: str, seed: int) -> None:
    seq = flat_sequence(n, filter_name=filter_name, seed=seed, shape=(32, 32))
    for i in range(n):
        path = directory / f"{filter_name}_{seed}_{i:03d}.fits"
        path.write_bytes(flat_bytes(seq.frames[i], seq.headers[i]))


def group_state(flatd: FlatdProcess, filter_name: str) -> str | None:
    for group in flatd.status()["groups"]:
        if group["group"].get("FILTER") == filter_name:
            return group["state"]
    return None


def test_sighup_applies_a_new_quiet_period_to_a_waiting_group_hook_and_metrics(daemon, tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        flatd = daemon(quiet=300, env={"NOTIFY_SOCKET": str(sock.path)}).start()
        write_sequence(flatd.incoming, 3, "r", seed=1)
        wait_for(lambda: group_state(flatd, "r") == "waiting", what="the group waiting 300 s")
        hook_out = tmp_path / "hook.txt"
        hook = [sys.executable, "-c", f"open({str(hook_out)!r}, 'a').write('{{path}}')"]
        write_config(
            flatd,
            quiet=0.5,
            output=f"on_master = {json.dumps(hook)}",
            status='metrics_file = "flatd.prom"',
        )
        flatd.proc.send_signal(signal.SIGHUP)
        sent = time.monotonic()
        [reloaded] = flatd.wait_event("config_reloaded")
        assert reloaded["changed"] == [
            "sequence.quiet_seconds",
            "output.on_master",
            "status.metrics_file",
        ]
        assert reloaded["values"]["sequence.quiet_seconds"] == {"from": 300.0, "to": 0.5}
        [written] = flatd.wait_event("master_written", timeout=20)
        assert time.monotonic() - sent < 15, "the waiting group kept its 300 s"
        wait_for(lambda: hook_out.exists() and hook_out.read_text() == written["path"], what="hook")
        metrics = tmp_path / "flatd.prom"
        wait_for(
            lambda: metrics.exists() and written["path"] in metrics.read_text(), what="metrics"
        )
        names = {f.name for f in text_string_to_metric_families(metrics.read_text())}
        assert "flatd_master_info" in names
        # systemd: RELOADING=1 with the monotonic time it wants, then READY=1 after it
        [reloading] = [m for m in sock.messages if "RELOADING=1" in m.split("\n")]
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.split("\n"))
        after = sock.messages[sock.messages.index(reloading) + 1 :]
        assert any("READY=1" in m.split("\n") for m in after)
        assert flatd.stop() == 0
    finally:
        sock.close()


def test_a_broken_config_is_refused_whole_and_the_daemon_runs_on(daemon):
    flatd = daemon(quiet=0.5).start()
    good = flatd.config.read_text()
    flatd.config.write_text("[sequence\nquiet_seconds = ")
    flatd.proc.send_signal(signal.SIGHUP)
    [refused] = flatd.wait_event("reload_refused")
    assert refused["level"] == "error" and "cannot parse TOML" in refused["problems"][0]

    flatd.config.write_text(good.replace("quiet_seconds = 0.5", "quiet_seconds = -1\nqiuet = 3"))
    flatd.proc.send_signal(signal.SIGHUP)
    refused = flatd.wait_event("reload_refused", count=2)[1]
    assert len(refused["problems"]) == 2, refused["problems"]
    assert any("sequence.quiet_seconds = -1.0 is out of range" in p for p in refused["problems"])
    assert any("unknown key sequence.qiuet" in p for p in refused["problems"])
    errors = wait_for(
        lambda: [e for e in flatd.status()["errors"] if "reload refused" in e["reason"]],
        what="the refusal in the status file",
    )
    assert errors[0]["path"] == str(flatd.config)
    assert flatd.named("config_reloaded") == []

    write_sequence(flatd.incoming, 3, "r", seed=2)  # the running configuration still works
    write_sequence(flatd.incoming, 2, "g", seed=3)
    flatd.wait_event("master_written", timeout=20)
    wait_for(lambda: group_state(flatd, "g") == "too_few", what="g with too few frames")
    assert flatd.proc.poll() is None

    # a valid file: what a reload may change applies, what only a restart may is named
    text = good.replace("min_frames = 3", "min_frames = 2")
    flatd.config.write_text(text.replace('directory = "masters"', 'directory = "elsewhere"'))
    flatd.proc.send_signal(signal.SIGHUP)
    [reloaded] = flatd.wait_event("config_reloaded")
    assert reloaded["changed"] == ["sequence.min_frames"]
    [restart] = flatd.wait_event("restart_needed")
    assert restart["keys"] == ["output.directory"]
    assert "restart flatd to change output.directory" in restart["reason"]
    flatd.wait_event("master_written", count=2, timeout=20)  # g, with no new frame
    assert len(masters_in(flatd.masters)) == 2  # min_frames 2 applied; the old directory kept
    assert not (flatd.root / "elsewhere").exists()
    assert flatd.stop() == 0


def test_sighup_watches_new_directories_forgets_old_ones_and_sets_the_log_level(daemon):
    flatd = daemon(quiet=0.5).start()
    write_sequence(flatd.incoming, 3, "r", seed=4)
    flatd.wait_event("master_written", timeout=20)
    other = flatd.root / "other"
    other.mkdir()
    write_sequence(other, 3, "g", seed=5)  # there before it is watched

    write_config(flatd, quiet=0.5)
    text = flatd.config.read_text().replace('["incoming"]', '["other"]')
    flatd.config.write_text(text)
    flatd.proc.send_signal(signal.SIGHUP)
    [reloaded] = flatd.wait_event("config_reloaded")
    assert reloaded["changed"] == ["watch.directories"]
    flatd.wait_event("unwatching", directory=str(flatd.incoming))
    flatd.wait_event("watching", directory=str(other))
    flatd.wait_event("master_written", count=2, timeout=20)  # other's frames, scanned
    status = wait_for(
        lambda: (s := flatd.status())["index"]["flats"] == 3 and s, what="incoming forgotten"
    )
    assert status["watch"]["directories"] == [str(other)]

    flatd.config.write_text(text.replace('level = "debug"', 'level = "warning"'))
    flatd.proc.send_signal(signal.SIGHUP)
    flatd.wait_event("config_reloaded", count=2)  # logged with the level it replaces
    write_sequence(flatd.incoming, 1, "r", seed=6)  # no longer watched
    write_sequence(other, 1, "g", seed=7)
    wait_for(lambda: flatd.status()["index"]["flats"] == 4, what="the new frame in other")
    assert flatd.named("frame_indexed", path=str(other / "g_7_000.fits")) == []  # info: quiet
    assert flatd.named("frame_indexed", path=str(flatd.incoming / "r_6_000.fits")) == []
    assert flatd.status()["index"]["flats"] == 4
    assert flatd.stop() == 0
