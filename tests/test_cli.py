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

from flatd import report
from flatd.cli import main
from flatd.config import Config, parse_config
from flatd.simulate import broken_bytes, fits_bytes, simulate_sequence, write_sequence
from tests.conftest import write_frame

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./config.toml or $FLATD_CONFIG of the developer's leaks into a test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLATD_CONFIG", raising=False)


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
    line = report.ProgressLine(terminal)  # type: ignore[arg-type]
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

    line = report.ProgressLine(Gone())  # type: ignore[arg-type]
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


def test_combine_of_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(combine_args(tmp_path, tmp_path / "empty")) == 0
    assert "no flat sequences found" in capsys.readouterr().out


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
