"""`flatd combine`, `flatd scan` and `flatd check-config` as a user runs them: in-process
through `main([...])`, and once as a real `python -m flatd` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd import oneshot
from flatd.cli import main
from flatd.config import Config, parse_config
from flatd.simulation.flats import broken_bytes, fits_bytes, simulate_sequence, write_sequence
from tests.helpers import write_frame

pytestmark = pytest.mark.usefixtures("isolated_cli")

ROOT = Path(__file__).resolve().parents[1]


def write_config(path: Path, text: str = "") -> Path:
    path.write_text(f'[output]\ndirectory = "masters"\npreview = false\n{text}')
    return path


@pytest.fixture
def night(tmp_path: Path) -> Path:
    """Two filters of 6 frames, one of 2 (too few), a truncated flat and a bias."""
    incoming = tmp_path / "incoming"
    write_sequence(simulate_sequence((48, 64), 6, filter_name="r", seed=1), incoming)
    write_sequence(simulate_sequence((48, 64), 6, filter_name="g'", seed=2), incoming)
    write_sequence(simulate_sequence((48, 64), 2, filter_name="i", seed=3), incoming)
    header = simulate_sequence((8, 8), 1, filter_name="r").headers[0]
    (incoming / "broken_r.fits").write_bytes(broken_bytes(header))
    header["IMAGETYP"] = "Bias"
    (incoming / "bias_001.fits").write_bytes(fits_bytes(np.zeros((48, 64), np.float32), header))
    return incoming


def combine_args(tmp_path: Path, *paths: Path, config: Path | None = None) -> list[str]:
    config = config or write_config(tmp_path / "flatd.toml")
    return [
        "combine",
        "--config",
        str(config),
        "--log-format",
        "json",
        "--output",
        str(tmp_path / "out"),
        *map(str, paths),
    ]


def test_combine_writes_masters_and_prints_a_summary(tmp_path: Path, night: Path, capsys) -> None:
    assert main(combine_args(tmp_path, night)) == 0
    out, err = capsys.readouterr()
    masters = sorted(p.name for p in (tmp_path / "out").glob("flat_*.fits"))
    assert masters == [
        "flat_gp_SIMCAM_1_1_20261123T173000.fits",
        "flat_r_SIMCAM_1_1_20261123T173000.fits",
    ]
    assert sorted(p.name for p in (tmp_path / "out" / "latest").iterdir()) == [
        "flat_gp_SIMCAM_1_1.fits",
        "flat_r_SIMCAM_1_1.fits",
    ]
    lines = out.splitlines()
    header = lines[0].split()
    assert header[:2] == ["group", "sequence"] and "used" in header and "master" in header
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert set(rows) == {"gp_SIMCAM_1_1", "r_SIMCAM_1_1", "i_SIMCAM_1_1"}
    for name in ("gp_SIMCAM_1_1", "r_SIMCAM_1_1"):
        row = rows[name]
        assert row[3:5] == ["6", "0"]  # used, rejected
        high, low = (float(v) for v in row[5].split(".."))
        assert 36000 < high < 44000 and 4500 < low < 5500  # median levels
        assert row[6] == str(tmp_path / "out" / f"flat_{name}_20261123T173000.fits")
    assert "too few" in lines[3] or "too few" in " ".join(rows["i_SIMCAM_1_1"])
    assert "i_SIMCAM_1_1: 2 usable frame(s), sequence.min_frames = 5" in out
    assert "broken_r.fits: truncated" in out
    assert "16 files: 14 flats, 1 skipped (not flats), 1 rejected" in out
    assert "\r" not in err  # no progress line when stderr is not a terminal
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "master_written" for e in events) == 2
    assert any(e["event"] == "frame_skipped" and "bias_001" in e["path"] for e in events)


def test_combine_shows_progress_on_a_terminal(
    tmp_path: Path, night: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(combine_args(tmp_path, night)) == 0
    err = capsys.readouterr().err
    assert "\rr_SIMCAM_1_1: 100% (48/48 rows)" in err
    assert "\rgp_SIMCAM_1_1: 6 frames, measuring" in err
    # every line is cleared: the last thing written before a newline is blank
    line = err.split("\n")[-1] if not err.endswith("\n") else ""
    assert line.strip() == ""


def test_progress_line_updates_in_place() -> None:
    class Terminal:
        text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    terminal = Terminal()
    line = oneshot.ProgressLine(terminal)  # type: ignore[arg-type]
    progress = line.for_group("r_SIMCAM_1_1")
    for done in (1520, 1521, 4096):
        progress(done, 4096)
    assert terminal.text == (
        "\rr_SIMCAM_1_1: 37% (1520/4096 rows)\rr_SIMCAM_1_1: 100% (4096/4096 rows)"
    )
    line.clear()
    assert terminal.text.endswith("\r" + " " * len("r_SIMCAM_1_1: 100% (4096/4096 rows)") + "\r")
    line.clear()  # twice: nothing more
    assert terminal.text.endswith("\r" + " " * len("r_SIMCAM_1_1: 100% (4096/4096 rows)") + "\r")


def test_progress_line_survives_a_closed_terminal() -> None:
    class Gone:
        def write(self, text: str) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    line = oneshot.ProgressLine(Gone())  # type: ignore[arg-type]
    line.for_group("r")(1, 2)  # no exception: the combination goes on
    line.clear()


def test_combine_fails_with_status_1_when_a_group_fails(tmp_path: Path, capsys) -> None:
    # 1400x1400 outputs alone need 17.6 MB: more than combine.mem_limit_mb = 16
    rng = np.random.default_rng(0)
    for i in range(2):
        write_frame(
            tmp_path / "big" / f"big_{i}.fits",
            rng.normal(20000, 100, (1400, 1400)).astype(np.float32),
            **{"DATE-OBS": f"2026-11-23T17:3{i}:00"},
        )
    write_sequence(simulate_sequence((32, 32), 2, filter_name="g", seed=1), tmp_path / "small")
    config = write_config(
        tmp_path / "flatd.toml", "[combine]\nmem_limit_mb = 16\n[sequence]\nmin_frames = 2\n"
    )
    status = main(combine_args(tmp_path, tmp_path / "big", tmp_path / "small", config=config))
    out = capsys.readouterr().out
    assert status == 1
    assert "failed" in out and "MemoryError" in out and "combine.mem_limit_mb" in out
    assert [p.name for p in (tmp_path / "out").glob("flat_*.fits")] == [
        "flat_g_SIMCAM_1_1_20261123T173000.fits"
    ]  # the other group is still written


def test_combine_usage_errors(tmp_path: Path, capsys) -> None:
    assert main(combine_args(tmp_path, tmp_path / "nowhere")) == 2
    assert "no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["combine"])
    assert exc.value.code == 2


def test_combine_of_nothing_says_no_master_was_written(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(combine_args(tmp_path, tmp_path / "empty")) == 1
    out, err = capsys.readouterr()
    assert "no flat sequences found" in out
    assert err.splitlines()[-1] == (
        "flatd combine: no master written: no files matching watch.patterns in the paths given"
    )


def test_combine_where_every_file_is_refused_exits_1_and_says_why(tmp_path: Path, capsys) -> None:
    refused = tmp_path / "refused"
    header = simulate_sequence((8, 8), 1).headers[0]
    refused.mkdir()
    pixels = np.zeros((8, 8), np.float32)
    header["IMAGETYP"] = "Light Frame"
    for i in range(3):
        (refused / f"light_{i}.fits").write_bytes(fits_bytes(pixels, header))
    del header["IMAGETYP"]
    for i in range(2):
        (refused / f"untyped_{i}.fits").write_bytes(fits_bytes(pixels, header))
    (refused / "broken.fits").write_bytes(b"not a FITS file at all" * 200)
    assert main(combine_args(tmp_path, refused)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("flatd combine: no master written: 6 files, none a flat: ")
    # each reason once, with how many files it refused (the words are frames.py's)
    assert "'Light Frame'" in last and "(3)" in last and "(2)" in last
    assert "not a FITS file" in last and last.endswith("(1)")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("flat_*"))


def test_combine_with_too_few_frames_everywhere_exits_1(tmp_path: Path, capsys) -> None:
    write_sequence(simulate_sequence((16, 16), 2, filter_name="i", seed=3), tmp_path / "few")
    assert main(combine_args(tmp_path, tmp_path / "few")) == 1
    out, err = capsys.readouterr()
    assert "too few" in out
    assert err.splitlines()[-1].startswith(
        "flatd combine: no master written: 2 flats in 1 sequence(s), none combined: "
        "i_SIMCAM_1_1 2026-11-23 17:30: 2 usable frame(s), sequence.min_frames = 5"
    )
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    warnings_ = [e for e in events if e["level"] == "warning"]
    assert [e["event"] for e in warnings_] == ["too_few_frames"]
    assert "sequence.min_frames = 5" in warnings_[0]["reason"]


def test_combine_with_an_iraf_header_card_writes_its_master(tmp_path: Path, capsys) -> None:
    """Issue 10: `RA = 15:58:11.37` (unquoted, as IRAF-era headers have it) in the first
    input ended `flatd combine` in a traceback; now the card is fixed or left out."""
    seq = simulate_sequence((16, 16), 5, seed=9, stars=False, cosmic_rays=False)
    paths = write_sequence(seq, tmp_path / "iraf")
    for path in paths:
        content = path.read_bytes()
        at = content.index(b"OBSERVER= ")
        card = b"RA      = 15:58:11.37".ljust(80) + b"TELRA   = 15:58:11.37 / not quoted".ljust(80)
        path.write_bytes(content[:at] + card + content[at + 160 :])
    assert main(combine_args(tmp_path, tmp_path / "iraf")) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    master = tmp_path / "out" / "flat_r_SIMCAM_1_1_20261123T173000.fits"
    assert fits.getheader(master)["NCOMBINE"] == 5 and str(master) in out


def test_combine_never_ends_in_a_traceback_when_a_master_write_raises(
    tmp_path: Path, night: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    report_text = "\nVerification reported errors:\nHDU 0:\n    Card 6:\n        Card 'RA' is not "
    report_text += "FITS standard (invalid value string: '15:58:11.37').\nNote: astropy.io.fits "
    report_text += "uses zero-based indexing.\n"

    def refuse(self, *args, **kwargs):
        raise fits.VerifyError(report_text)

    monkeypatch.setattr(fits.HDUList, "writeto", refuse)
    assert main(combine_args(tmp_path, night)) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    reason = "VerifyError: Card 'RA' is not FITS standard (invalid value string: '15:58:11.37')."
    assert f"r_SIMCAM_1_1: combination crashed: {reason}" in out
    assert "flatd combine: no master written" in err
    failed = [json.loads(line) for line in err.splitlines() if '"combine_failed"' in line]
    assert len(failed) == 2 and all(e["level"] == "warning" for e in failed)
    assert all(reason in e["reason"] and "\n" not in e["reason"] for e in failed)


def test_a_command_that_raises_says_what_failed_and_exits_1(
    tmp_path: Path, night: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("the index is on fire\nsecond line")

    monkeypatch.setattr(oneshot, "index_paths", broken)
    for command in ("combine", "scan"):
        args = combine_args(tmp_path, night)
        args[0] = command
        if command == "scan":
            args.remove("--output")
            args.remove(str(tmp_path / "out"))
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.splitlines()[-1] == (
            f"flatd {command}: failed: RuntimeError: the index is on fire; second line"
        )


def test_scan_json(tmp_path: Path, night: Path, capsys) -> None:
    config = write_config(tmp_path / "flatd.toml")
    assert (
        main(["scan", "--json", "--config", str(config), "--log-format", "json", str(night)]) == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document["index"] == {"frames": 16, "flats": 14, "skipped": 1, "rejected": 1}
    groups = {g["name"]: g for g in document["groups"]}
    assert set(groups) == {"gp_SIMCAM_1_1", "r_SIMCAM_1_1", "i_SIMCAM_1_1"}
    assert groups["gp_SIMCAM_1_1"]["group"] == {
        "FILTER": "g'",
        "INSTRUME": "SIMCAM",
        "XBINNING": 1,
        "YBINNING": 1,
    }
    (sequence,) = groups["r_SIMCAM_1_1"]["sequences"]
    assert len(sequence["frames"]) == 6
    first = sequence["frames"][0]
    assert first["path"].endswith("flat_r_000.fits") and first["shape"] == [48, 64]
    assert 36000 < first["median"] < 44000
    assert [Path(s["path"]).name for s in document["skipped"]] == ["bias_001.fits"]
    assert "Bias" in document["skipped"][0]["reason"]
    (rejected,) = document["rejected"]
    assert Path(rejected["path"]).name == "broken_r.fits" and "truncated" in rejected["reason"]


def test_scan_text(tmp_path: Path, night: Path, capsys) -> None:
    config = write_config(tmp_path / "flatd.toml")
    assert main(["scan", "--config", str(config), "--log-format", "json", str(night)]) == 0
    out = capsys.readouterr().out
    assert "group r_SIMCAM_1_1" in out and "broken_r.fits: truncated" in out


def test_check_config_suggests_the_key_meant(tmp_path: Path, capsys) -> None:
    config = tmp_path / "flatd.toml"
    config.write_text("[combine]\nsigma_hi = 3.0\n")
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "sigma_hi" in err and "sigma_high" in err


def test_check_config_prints_the_effective_configuration(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "flatd.toml", "[combine]\nsigma_high = 3.0\n")
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "sigma_high = 3.0" in out and str(tmp_path / "masters") in out
    effective = parse_config({"combine": {"sigma_high": 3.0}})
    assert effective.combine.sigma_high == 3.0 and Config().combine.sigma_high == 5.0


def test_python_m_flatd_combine(tmp_path: Path, night: Path) -> None:
    config = write_config(tmp_path / "flatd.toml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FLATD_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "flatd", "combine", "--config", str(config), str(night)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "r_SIMCAM_1_1" in done.stdout and "\r" not in done.stderr
    master = tmp_path / "masters" / "flat_r_SIMCAM_1_1_20261123T173000.fits"
    assert fits.getheader(master)["NCOMBINE"] == 6


# -- promote, remake, duplicates, without a daemon ----------------------------------------------
def two_nights(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Two nights of r flats of the same flat combined into tmp_path/masters; the config."""
    config = write_config(tmp_path / "flatd.toml", "[sequence]\nmin_frames = 3\n")
    first = simulate_sequence((32, 32), 4, seed=1, stars=False)
    second = simulate_sequence(
        (32, 32), 4, seed=2, stars=False, true_flat=first.true_flat, start=_day(24)
    )
    write_sequence(first, tmp_path / "n23", prefix="a")
    write_sequence(second, tmp_path / "n24", prefix="b")
    args = ["combine", "--config", str(config), str(tmp_path / "n23"), str(tmp_path / "n24")]
    assert main(args) == 0
    masters = sorted((tmp_path / "masters").glob("flat_*.fits"))
    assert [p.name[-20:] for p in masters] == ["20261123T173000.fits", "20261124T173000.fits"]
    return config, masters


def _day(day: int):
    from datetime import datetime

    return datetime(2026, 11, day, 17, 30)


def test_promote_demote_and_reset_move_latest_by_the_rule(tmp_path: Path, capsys) -> None:
    config, (older, newer) = two_nights(tmp_path)
    latest = tmp_path / "masters" / "latest" / "flat_r_SIMCAM_1_1.fits"
    assert latest.samefile(newer)
    capsys.readouterr()
    assert main(["promote", "--config", str(config), "--demote", str(latest)]) == 0
    out = capsys.readouterr().out
    assert f"{newer.name}: demoted" in out and f"-> {older.name}" in out
    assert latest.samefile(older)
    assert main(["promote", "--config", str(config), str(older)]) == 0  # older: accepted ...
    out = capsys.readouterr().out
    assert f"-> {newer.name}" not in out and f"-> {older.name}" in out
    assert main(["promote", "--config", str(config), "--reset", newer.name]) == 0
    assert latest.samefile(newer)  # ... but the newest accepted sequence is latest/
    decisions = json.loads((tmp_path / "masters" / ".flatd-decisions.json").read_text())
    assert decisions["masters"][older.name]["decision"] == "promote"
    assert newer.name not in decisions["masters"]
    assert main(["promote", "--config", str(config), "flat_x.fits"]) == 2


def test_remake_without_a_daemon_makes_the_master_again_here(tmp_path: Path, capsys) -> None:
    config, (older, newer) = two_nights(tmp_path)
    capsys.readouterr()
    assert main(["remake", "--config", str(config), "--all"]) == 0
    assert "every master of the output directory was made with the configuration's" in (
        capsys.readouterr().out
    )
    config.write_text(config.read_text() + "[combine]\nsigma_high = 4.0\n")
    written = newer.stat().st_mtime_ns
    assert main(["remake", "--config", str(config), "--group", "r_SIMCAM_1_1"]) == 0
    out = capsys.readouterr().out
    assert f"{older}: -> {older}" in out and f"{newer}: -> {newer}" in out
    assert fits.getheader(newer)["CMBSHIGH"] == 4.0 and newer.stat().st_mtime_ns > written
    assert (tmp_path / "masters" / "latest" / "flat_r_SIMCAM_1_1.fits").samefile(newer)
    for frame in (tmp_path / "n24").glob("*.fits"):
        frame.unlink()  # its inputs gone: it cannot be made again, and is left as it is
    assert main(["remake", "--config", str(config), str(newer)]) == 1
    assert "none of its 4 inputs is on disk as it was" in capsys.readouterr().out
    assert newer.exists()


def test_remake_since_a_date_makes_only_the_later_nights_again(tmp_path: Path, capsys) -> None:
    config, (older, newer) = two_nights(tmp_path)
    config.write_text(config.read_text() + "[combine]\nsigma_high = 4.0\n")
    capsys.readouterr()
    assert main(["remake", "--config", str(config), "--since", "2026-11-24"]) == 0
    out = capsys.readouterr().out
    assert f"{newer}: -> {newer}" in out and str(older) not in out
    assert fits.getheader(newer)["CMBSHIGH"] == 4.0
    assert fits.getheader(older)["CMBSHIGH"] == 5.0
    args = ["remake", "--config", str(config), "--group", "r_SIMCAM_1_1", "--since", "2026-11-25"]
    assert main(args) == 0
    assert "every master of group r_SIMCAM_1_1 since 2026-11-25 was made" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["remake", "--config", str(config), "--since", "24/11/2026"])
    assert "not a date (YYYY-MM-DD)" in capsys.readouterr().err


def test_scan_lists_a_copy_as_a_duplicate_of_the_frame(tmp_path: Path, capsys) -> None:
    incoming = tmp_path / "incoming"
    [first, *_] = write_sequence(simulate_sequence((16, 16), 3, seed=4), incoming)
    (incoming / "again").mkdir()
    (incoming / "again" / first.name).write_bytes(first.read_bytes())
    assert main(["scan", "--json", str(incoming)]) == 0
    scanned = json.loads(capsys.readouterr().out)
    assert scanned["duplicates"] == [
        {"path": str(incoming / "again" / first.name), "duplicate_of": str(first)}
    ]
    assert scanned["index"] == {"frames": 4, "flats": 3, "skipped": 0, "rejected": 0}
    assert main(["scan", str(incoming)]) == 0
    assert f"{incoming / 'again' / first.name}: duplicate of {first}" in capsys.readouterr().out
