"""Configuration: defaults, every problem named at once, suggestions, paths, check-config."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from flatd.config import Config, ConfigError, find_config, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


def test_repo_config_is_the_documented_default():
    from_file = load_config(REPO / "config.toml")
    defaults = load_config(None)
    # both resolve relative paths, against different bases: compare what was written
    assert (
        dataclasses.replace(from_file, source=None).to_dict()["combine"]
        == defaults.to_dict()["combine"]
    )
    assert from_file.watch.directories == (REPO / "incoming",)
    assert from_file.output.directory == REPO / "masters"
    assert parse_config({}) == Config()


def test_misspelled_key_is_named_with_the_nearest_valid_one():
    problems = problems_of({"combine": {"sigma_hi": 3.0}})
    assert problems == ["unknown key combine.sigma_hi; did you mean combine.sigma_high?"]


def test_the_guides_typo_is_refused():
    problems = problems_of({"combine": {"signma_clip_dev_func": "mad_std"}})
    assert problems == [
        "unknown key combine.signma_clip_dev_func; did you mean "
        "combine.deviation? ('sigma_clip_dev_func' is ccdproc's name for it)"
    ]


def test_ccdproc_names_point_to_flatds_keys():
    problems = problems_of({"combine": {"sigma_clip_low_thresh": 5, "mem_limit": 350e6}})
    assert [p.split("; ")[1] for p in problems] == [
        "did you mean combine.sigma_low? ('sigma_clip_low_thresh' is ccdproc's name for it)",
        "did you mean combine.mem_limit_mb? ('mem_limit' is ccdproc's name for it)",
    ]


def test_all_problems_are_reported_in_one_go():
    problems = problems_of(
        {
            "sequnce": {"min_frames": 3},
            "combine": {"method": "avg", "mem_limit_mb": "lots", "sigma_low": -1},
            "watch": {"directories": "incoming", "recursive": "yes"},
        }
    )
    assert len(problems) == 6
    text = "\n".join(problems)
    assert "unknown table [sequnce]; did you mean sequence?" in text
    assert 'combine.method = "avg" is not allowed; choose one of "average", "median"' in text
    assert "combine.mem_limit_mb must be a number" in text
    assert "combine.sigma_low = -1.0 is out of range; it must be > 0.0" in text
    assert "watch.directories must be a list of paths" in text
    assert "watch.recursive must be true or false" in text


def test_integers_are_not_booleans_and_floats_not_integers():
    problems = problems_of({"sequence": {"min_frames": 2.5}, "output": {"latest": 1}})
    assert any("sequence.min_frames must be an integer" in p for p in problems)
    assert any("output.latest must be true or false" in p for p in problems)


def test_cross_field_check():
    problems = problems_of({"qa": {"min_level": 60000.0, "max_level": 50000.0}})
    assert "qa.min_level (60000.0) must be below qa.max_level (50000.0)" in problems


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path):
    cfg = tmp_path / "site" / "flatd.toml"
    cfg.parent.mkdir()
    cfg.write_text('[watch]\ndirectories = ["raw", "/abs/in"]\n[output]\ndirectory = "out"\n')
    config = load_config(cfg)
    assert config.watch.directories == (cfg.parent / "raw", Path("/abs/in"))
    assert config.output.directory == cfg.parent / "out"
    assert config.status.file == cfg.parent / "status.json"


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLATD_CONFIG", raising=False)
    (tmp_path / "config.toml").write_text("")
    assert find_config(None) == Path("config.toml")
    monkeypatch.setenv("FLATD_CONFIG", "/x/env.toml")
    assert find_config(None) == Path("/x/env.toml")
    assert find_config("given.toml") == Path("given.toml")


def test_unparseable_toml_names_the_problem(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[combine\nmethod = 1\n")
    with pytest.raises(ConfigError, match="cannot parse TOML"):
        load_config(bad)


def run_flatd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flatd", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_check_config_prints_effective_configuration(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sequence]\nmin_frames = 3\n")
    done = run_flatd("check-config", "--config", str(cfg), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "min_frames = 3" in done.stdout
    assert f'directory = "{tmp_path / "masters"}"' in done.stdout


def test_check_config_exits_2_naming_every_problem(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[combine]\nsigma_hi = 3\nscale = "inv_median"\n')
    done = run_flatd("check-config", "--config", str(cfg), cwd=tmp_path)
    assert done.returncode == 2
    assert "combine.sigma_hi; did you mean combine.sigma_high?" in done.stderr
    assert 'combine.scale = "inv_median" is not allowed' in done.stderr
