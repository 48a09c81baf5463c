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
    assert from_file.frames == defaults.frames
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


def test_cross_field_problems_are_named_alongside_the_others():
    problems = problems_of(
        {
            "qa": {"min_level": 60000.0, "max_level": 50000.0, "max_change": -1},
            "combine": {"method": "avg"},
            "frames": {"required": ["READMODE"]},
        }
    )
    assert "qa.min_level (60000.0) must be below qa.max_level (50000.0)" in problems
    assert 'frames.required lists "READMODE", which is not in frames.group_by' in problems
    assert any(p.startswith("qa.max_change = -1.0 is out of range") for p in problems)
    assert len(problems) == 4


def test_a_cross_field_check_is_not_run_on_a_key_that_was_itself_wrong():
    problems = problems_of({"qa": {"min_level": "lots", "max_level": 500.0}})
    assert problems == ["qa.min_level must be a number, got str 'lots'"]


@pytest.mark.parametrize(
    ("section", "key", "value", "meant"),
    [
        ("combine", "method", "mean", "average"),
        ("combine", "method", "Median", "median"),
        ("combine", "deviation", "mad", "mad_std"),
        ("combine", "scale", "inverse_median", "median"),
        ("combine", "center", "average", "mean"),
        ("log", "level", "warn", "warning"),
        ("log", "format", "text", "console"),
    ],
)
def test_a_choice_is_suggested_by_meaning_before_spelling(section, key, value, meant):
    [problem] = problems_of({section: {key: value}})
    assert problem.split("; ")[-1].startswith(f"did you mean {meant}?"), problem


def test_a_key_is_suggested_by_meaning_when_no_spelling_is_close():
    [problem] = problems_of({"watch": {"folders": ["/data"]}})
    assert problem == "unknown key watch.folders; did you mean watch.directories?"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("FILTER ", "has spaces around it"),
        (" FILTER", "has spaces around it"),
        ("DATE-OBS", "changes from frame to frame"),
        ("EXPTIME", "changes from frame to frame"),
        ("NAXIS1", "changes from frame to frame"),
        ("READOUTMODE", "longer than the 8 characters"),
        ("READ MODE", "characters FITS forbids"),
        ("FILTÉR", "characters FITS forbids"),
        ("HIERARCH ESO INS FILT1 NAMÉ", "is not a HIERARCH keyword"),
    ],
)
def test_keyword_names_that_cannot_work_are_refused(value, words):
    [problem] = problems_of({"frames": {"group_by": ["INSTRUME", value]}})
    assert problem.startswith("frames.group_by[1]") and words in problem, problem


def test_keyword_names_are_upper_cased_and_hierarch_spaced():
    frames = parse_config(
        {
            "frames": {
                "group_by": ["filter", "instrume", "readmode"],
                "type_keywords": ["hierarch eso  dpr type", "obstype"],
                "filter_keywords": ["filter1+filter2"],
            }
        }
    ).frames
    assert frames.group_by == ("FILTER", "INSTRUME", "READMODE")
    assert frames.type_keywords == ("HIERARCH ESO DPR TYPE", "OBSTYPE")
    assert frames.filter_keywords == ("FILTER1+FILTER2",)


def test_a_keyword_listed_twice_is_refused():
    [problem] = problems_of({"frames": {"group_by": ["FILTER", "filter"]}})
    assert problem == "frames.group_by lists 'FILTER' twice"


def test_old_frames_keys_still_work_and_cannot_be_given_twice():
    frames = parse_config(
        {"frames": {"imagetyp_keyword": "OBSTYPE", "date_keyword": "UTDATE"}}
    ).frames
    assert (frames.type_keywords, frames.date_keywords) == (("OBSTYPE",), ("UTDATE",))
    [problem] = problems_of({"frames": {"imagetyp_keyword": "OBSTYPE", "type_keywords": ["X"]}})
    assert problem == (
        "frames.imagetyp_keyword is the old name of frames.type_keywords; give "
        "frames.type_keywords only"
    )


def test_the_users_keys_alternatives_are_a_table():
    frames = parse_config(
        {"frames": {"group_by": ["FILTER", "READMODE"], "keywords": {"readmode": ["READOUTM"]}}}
    ).frames
    assert frames.keywords == (("READMODE", ("READOUTM",)),)
    problems = problems_of(
        {"frames": {"keywords": {"FILTER": ["FILTREAR"], "GAINMODE": ["GAINMODE"]}}}
    )
    assert problems == [
        "frames.keywords.FILTER: FILTER is the filter role; list its keywords in "
        "frames.filter_keywords",
        "frames.keywords.GAINMODE: GAINMODE is not in frames.group_by",
    ]


def test_check_config_prints_a_configuration_that_loads_again(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[frames]\ngroup_by = ["FILTER", "READMODE"]\n[frames.keywords]\nREADMODE = ["READOUTM"]\n'
    )
    done = run_flatd("check-config", "--config", str(cfg), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '[frames.keywords]\nREADMODE = [\n    "READOUTM",\n]' in done.stdout
    again = tmp_path / "again.toml"
    again.write_text(done.stdout)
    assert load_config(again).frames == load_config(cfg).frames
