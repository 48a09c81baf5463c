"""The configuration: TOML in, frozen dataclasses out, every problem named at once.

Each section of SPEC.md is one dataclass below; a field's type and its `metadata`
(allowed choices and what they are also called, bounds, which kind of FITS keyword a
string must be) are the whole schema, so the loader, the error messages and
`flatd check-config` all read from the same place. Checks that span keys run whatever
else is wrong, on the keys that were themselves valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flatd.daemon.hook import command_problems
from flatd.frames import dialects

DEFAULT_SEARCH_PATHS = (Path("config.toml"), Path("/etc/flatd/config.toml"))


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` names every one of them."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration {source}:\n{lines}")


def _opt(
    default: Any,
    *,
    choices: tuple[Any, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_min: bool = False,
    non_empty: bool = False,
    relative_path: bool = False,
    synonyms: dict[str, str] | None = None,
    keyword: str = "",
) -> Any:
    """A field's default and schema. `synonyms` maps what users also call a choice to
    the choice (`mean` -> `average`); `keyword` makes each string a FITS keyword of a
    kind: "keyword" (one keyword), "group" (a keyword whose value names a group, so not
    one that changes from frame to frame), "wheels" (`A` or `A+B+...`), "pair" (`A` or
    `X+Y`)."""
    meta = {
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_min": exclusive_min,
        "non_empty": non_empty,
        "relative_path": relative_path,
        "synonyms": synonyms or {},
        "keyword": keyword,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class WatchConfig:
    directories: tuple[Path, ...] = _opt((Path("incoming"),), non_empty=True, relative_path=True)
    recursive: bool = _opt(True)
    patterns: tuple[str, ...] = _opt(  # matched case-insensitively (discover.matches)
        ("*.fits", "*.fit", "*.fts", "*.fits.fz", "*.fits.gz"), non_empty=True
    )
    polling: bool = _opt(False)
    poll_interval_seconds: float = _opt(2.0, minimum=0.0, exclusive_min=True, maximum=3600.0)


KeywordTable = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class FramesConfig:
    """Which keywords say a frame's type, group and date (see flatd.frames.dialects and
    docs/cameras.md); every list is tried in order, the first keyword present wins."""

    type_keywords: tuple[str, ...] = _opt(dialects.TYPE_KEYWORDS, non_empty=True, keyword="keyword")
    flat_types: tuple[str, ...] = _opt(())  # () = flatd's rule (dialects.is_flat_type)
    untyped_are_flats: bool = _opt(False)  # no type keyword at all: a flat (SharpCap)
    group_by: tuple[str, ...] = _opt(dialects.DEFAULT_GROUP_BY, non_empty=True, keyword="group")
    filter_keywords: tuple[str, ...] = _opt(
        dialects.FILTER_KEYWORDS, non_empty=True, keyword="wheels"
    )
    instrument_keywords: tuple[str, ...] = _opt(
        dialects.INSTRUMENT_KEYWORDS, non_empty=True, keyword="keyword"
    )
    binning_keywords: tuple[str, ...] = _opt(
        dialects.BINNING_KEYWORDS, non_empty=True, keyword="pair"
    )
    keywords: KeywordTable = _opt((), keyword="group")  # [frames.keywords] KEY = [...]
    required: tuple[str, ...] = _opt((), keyword="group")
    date_keywords: tuple[str, ...] = _opt(dialects.DATE_KEYWORDS, non_empty=True, keyword="keyword")
    time_keywords: tuple[str, ...] = _opt(dialects.TIME_KEYWORDS, keyword="keyword")


RENAMED_KEYS = {  # old names that still work, as one-keyword lists of their new key
    "frames.imagetyp_keyword": "type_keywords",
    "frames.date_keyword": "date_keywords",
}


@dataclass(frozen=True)
class SequenceConfig:
    quiet_seconds: float = _opt(300.0, minimum=0.0)
    min_frames: int = _opt(5, minimum=1)
    gap_minutes: float = _opt(120.0, minimum=0.0, exclusive_min=True)
    keep_days: float = _opt(7.0, minimum=0.0, exclusive_min=True)


@dataclass(frozen=True)
class CombineConfig:
    method: str = _opt(
        "average",
        choices=("average", "median"),
        synonyms={"mean": "average", "avg": "average", "averaged": "average", "med": "median"},
    )
    scale: str = _opt(
        "median",
        choices=("median", "mean", "none"),
        synonyms={
            "inv_median": "median",
            "inverse_median": "median",
            "1/median": "median",
            "inv_mean": "mean",
            "average": "mean",
            "avg": "mean",
            "off": "none",
            "no": "none",
            "false": "none",
        },
    )
    sigma_clip: bool = _opt(True)
    sigma_low: float = _opt(5.0, minimum=0.0, exclusive_min=True)
    sigma_high: float = _opt(5.0, minimum=0.0, exclusive_min=True)
    center: str = _opt(
        "median",
        choices=("median", "mean"),
        synonyms={"average": "mean", "avg": "mean", "med": "median"},
    )
    deviation: str = _opt(
        "mad_std",
        choices=("mad_std", "std", "noise"),
        synonyms={
            "mad": "mad_std",
            "stddev": "std",
            "stdev": "std",
            "std_dev": "std",
            "sigma": "std",
            "poisson": "noise",
            "ccd": "noise",
        },
    )
    gain: float = _opt(0.0, minimum=0.0)
    read_noise: float = _opt(0.0, minimum=0.0)
    mem_limit_mb: float = _opt(350.0, minimum=16.0)
    dtype: str = _opt(
        "float32",
        choices=("float32", "float64"),
        synonyms={"float": "float32", "single": "float32", "double": "float64"},
    )
    # a mosaic's frames: one scale over all their extensions (the amplifiers' and CCDs'
    # relative gains stay in the master), or each extension scaled and normalised alone
    normalise: str = _opt(
        "mosaic",
        choices=("mosaic", "extension"),
        synonyms={"whole": "mosaic", "frame": "mosaic", "per_extension": "extension"},
    )


@dataclass(frozen=True)
class QAConfig:
    min_level: float = _opt(1000.0, minimum=0.0)
    max_level: float = _opt(55000.0, minimum=0.0, exclusive_min=True)
    saturation_level: float = _opt(0.0, minimum=0.0)
    max_saturated_fraction: float = _opt(0.05, minimum=0.0, maximum=1.0)
    min_response: float = _opt(0.05, minimum=0.0, maximum=1.0)
    max_change: float = _opt(0.02, minimum=0.0, exclusive_min=True)
    promote_changed: bool = _opt(False)


@dataclass(frozen=True)
class OutputConfig:
    directory: Path = _opt(Path("masters"), relative_path=True)
    latest: bool = _opt(True)
    preview: bool = _opt(True)
    on_master: tuple[str, ...] = _opt(())
    hook_timeout_seconds: float = _opt(60.0, minimum=0.0, exclusive_min=True, maximum=3600.0)


@dataclass(frozen=True)
class StatusConfig:
    file: Path = _opt(Path("status.json"), relative_path=True)
    metrics_file: str = _opt("", relative_path=True)  # "" = no metrics file


@dataclass(frozen=True)
class LogConfig:
    format: str = _opt(
        "auto",
        choices=("json", "console", "auto"),
        synonyms={"text": "console", "plain": "console", "human": "console", "jsonl": "json"},
    )
    level: str = _opt(
        "info",
        choices=("debug", "info", "warning", "error"),
        synonyms={"warn": "warning", "err": "error", "verbose": "debug", "critical": "error"},
    )


@dataclass(frozen=True)
class CalibrateConfig:
    raw: str = _opt("reject", choices=("reject", "calibrate"))
    overscan: bool = _opt(True)
    overscan_model: str = _opt(
        "median", choices=("median", "mean", "chebyshev", "legendre", "polynomial")
    )
    overscan_degree: int = _opt(1, minimum=0, maximum=20)
    trim: bool = _opt(True)
    bias: str = _opt("")
    dark: str = _opt("")
    overscan_keywords: tuple[str, ...] = _opt(("BIASSEC",), non_empty=True, keyword="keyword")
    trim_keywords: tuple[str, ...] = _opt(("TRIMSEC", "DATASEC"), non_empty=True, keyword="keyword")


@dataclass(frozen=True)
class Config:
    watch: WatchConfig = field(default_factory=WatchConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    combine: CombineConfig = field(default_factory=CombineConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    log: LogConfig = field(default_factory=LogConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    source: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The effective configuration as plain TOML-able values (paths as strings)."""
        document = {}
        for name, cls in _sections():
            section, hints = getattr(self, name), typing.get_type_hints(cls)
            document[name] = {
                f.name: _plain(getattr(section, f.name), hints[f.name])
                for f in dataclasses.fields(cls)
            }
        return document


def _plain(value: Any, kind: Any = None) -> Any:
    if kind == KeywordTable:
        return {key: list(keywords) for key, keywords in value}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _sections() -> list[tuple[str, type]]:
    hints = typing.get_type_hints(Config)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Config) if f.name != "source"]


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to use: `explicit`, else `$FLATD_CONFIG`, else ./config.toml, else
    /etc/flatd/config.toml; None when none of the implicit places has one."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("FLATD_CONFIG"):
        return Path(env)
    return next((p for p in DEFAULT_SEARCH_PATHS if p.is_file()), None)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a config file; None gives the built-in defaults relative to the
    current directory. Raises ConfigError naming every problem."""
    if path is None:
        return _resolve_paths(Config(), Path.cwd())
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), [f"file not found: {path}"]) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot parse TOML: {exc}"]) from None
    config = parse_config(raw, source=str(path))
    return dataclasses.replace(_resolve_paths(config, path.resolve().parent), source=path)


def reload_config(running: Config) -> Config:
    """Read the file `running` was loaded from again, for a reload of `flatd run`.
    Raises ConfigError naming every problem, or when `running` came from no file."""
    if running.source is None:
        raise ConfigError(
            "(no file)",
            [
                "flatd started on its built-in defaults (no config file was found), so there "
                "is no file to read again: restart it with --config PATH"
            ],
        )
    return load_config(running.source)


def differences(old: Config, new: Config) -> list[str]:
    """The keys (`section.key`) whose effective values differ, in the schema's order."""
    before, after = old.to_dict(), new.to_dict()
    return [
        f"{section}.{key}"
        for section, values in before.items()
        for key, value in values.items()
        if after[section][key] != value
    ]


def cross_field_problems(config: Config) -> list[str]:
    """What the checks that span keys find wrong with a whole `Config` (one made by
    mixing two valid ones, as a reload that keeps some keys until a restart does)."""
    problems: list[str] = []
    _check_cross_field(config, problems, set())
    return problems


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a parsed TOML document into a Config (paths still as written). Every
    problem is named at once: the checks that span keys run on the keys that were valid."""
    problems: list[str] = []
    invalid: set[str] = set()
    sections = dict(_sections())
    built: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in sections:
            problems.append(f"unknown table [{name}]{_suggest(name, sections)}")
            continue
        if not isinstance(value, dict):
            problems.append(f"[{name}] must be a table, not {type(value).__name__}")
            invalid.add(name)
            continue
        built[name] = _parse_section(name, sections[name], value, problems, invalid)
    config = Config(**built)
    _check_cross_field(config, problems, invalid)
    if problems:
        raise ConfigError(source, problems)
    return config


def _parse_section(
    section: str, cls: type, values: dict[str, Any], problems: list[str], invalid: set[str]
) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in _renamed(section, values, problems, invalid).items():
        where = f"{section}.{key}"
        if key not in fields:
            problems.append(f"unknown key {where}{_suggest(key, fields, section)}")
            continue
        converted = _convert(where, hints[key], fields[key].metadata, value, problems)
        if converted is _INVALID:
            invalid.add(where)
        else:
            kwargs[key] = converted
    return cls(**kwargs)


def _renamed(
    section: str, values: dict[str, Any], problems: list[str], invalid: set[str]
) -> dict[str, Any]:
    """`values` with old key names replaced by their new ones (a single keyword becomes
    a one-keyword list); giving both names is a problem."""
    result = dict(values)
    for key, value in values.items():
        new = RENAMED_KEYS.get(f"{section}.{key}")
        if new is None:
            continue
        del result[key]
        if new in values:
            problems.append(
                f"{section}.{key} is the old name of {section}.{new}; give {section}.{new} only"
            )
            invalid.add(f"{section}.{new}")
            continue
        result[new] = [value] if isinstance(value, str) else value
    return result


_INVALID = object()


def _convert(
    where: str, kind: Any, meta: typing.Mapping[str, Any], value: Any, problems: list[str]
) -> Any:
    if kind == KeywordTable:
        return _convert_table(where, meta, value, problems)
    origin = typing.get_origin(kind)
    if origin is tuple:
        item_kind = typing.get_args(kind)[0]
        if isinstance(value, str) or not isinstance(value, list):
            problems.append(
                f"{where} must be a list of {_kind_name(item_kind)}s, got {_describe(value)}"
            )
            return _INVALID
        items = [
            _convert_scalar(f"{where}[{i}]", item_kind, meta, v, problems)
            for i, v in enumerate(value)
        ]
        if any(i is _INVALID for i in items):
            return _INVALID
        if meta.get("non_empty") and not items:
            problems.append(f"{where} must not be empty")
            return _INVALID
        if len(set(items)) != len(items):
            twice = next(i for i in items if items.count(i) > 1)
            problems.append(f"{where} lists {twice!r} twice")
            return _INVALID
        return tuple(items)
    if isinstance(kind, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return _convert_scalar(where, kind, meta, value, problems)


def _convert_table(
    where: str, meta: typing.Mapping[str, Any], value: Any, problems: list[str]
) -> Any:
    """A TOML table of group key -> list of keywords, as a hashable tuple of pairs."""
    if not isinstance(value, dict):
        problems.append(f'{where} must be a table (KEY = ["KEYWORD", ...]), got {_describe(value)}')
        return _INVALID
    pairs = []
    for key, keywords in value.items():
        name = _convert_scalar(f"{where} key", str, meta, key, problems)
        listed = _convert(
            f"{where}.{key}",
            tuple[str, ...],
            {"non_empty": True, "keyword": "group"},
            [keywords] if isinstance(keywords, str) else keywords,
            problems,
        )
        if name is _INVALID or listed is _INVALID:
            return _INVALID
        pairs.append((name, listed))
    return tuple(pairs)


def _convert_scalar(
    where: str, kind: type, meta: typing.Mapping[str, Any], value: Any, problems: list[str]
) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            problems.append(f"{where} must be true or false, got {_describe(value)}")
            return _INVALID
        return value
    if kind in (int, float):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind is int and not isinstance(value, int))
        ):
            problems.append(f"{where} must be {_kind_name(kind)}, got {_describe(value)}")
            return _INVALID
        return _check_range(where, kind(value), meta, problems)
    if kind in (str, Path):
        if not isinstance(value, str):
            problems.append(f"{where} must be a string, got {_describe(value)}")
            return _INVALID
        if meta.get("non_empty") and not value.strip():
            problems.append(f"{where} must not be empty")
            return _INVALID
        if meta.get("keyword"):
            return _keyword_entry(where, meta["keyword"], value, problems)
        choices = meta.get("choices") or ()
        if choices and value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            problems.append(
                f'{where} = "{value}" is not allowed; choose one of {allowed}'
                f"{_suggest_choice(value, choices, meta.get('synonyms') or {})}"
            )
            return _INVALID
        return Path(value) if kind is Path else value
    raise TypeError(f"no converter for {kind!r}")  # a schema bug, not a user error


def _check_range(
    where: str, value: float, meta: typing.Mapping[str, Any], problems: list[str]
) -> Any:
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None and (value < low or (meta.get("exclusive_min") and value == low)):
        relation = ">" if meta.get("exclusive_min") else ">="
        problems.append(
            f"{where} = {value} is out of range; it must be {relation} {low}"
            + (f" and <= {high}" if high is not None else "")
        )
        return _INVALID
    if high is not None and value > high:
        problems.append(f"{where} = {value} is out of range; it must be <= {high}")
        return _INVALID
    return value


def _check_cross_field(config: Config, problems: list[str], invalid: set[str]) -> None:
    """The checks that span keys; each runs only when the keys it reads were valid."""

    def valid(*keys: str) -> bool:
        return not any(k in invalid or k.split(".")[0] in invalid for k in keys)

    if valid("qa.min_level", "qa.max_level") and config.qa.min_level >= config.qa.max_level:
        problems.append(
            f"qa.min_level ({config.qa.min_level}) must be below "
            f"qa.max_level ({config.qa.max_level})"
        )
    frames = config.frames
    if valid("frames.group_by", "frames.required"):
        problems.extend(
            f'frames.required lists "{key}", which is not in frames.group_by'
            for key in frames.required
            if key not in frames.group_by
        )
    if valid("frames.keywords"):
        for key, _ in frames.keywords:
            if key in dialects.ROLE_OF_KEY:
                role = dialects.ROLE_OF_KEY[key]
                problems.append(
                    f"frames.keywords.{key}: {key} is the {role} role; list its keywords in "
                    f"frames.{role}_keywords"
                )
            elif valid("frames.group_by") and key not in frames.group_by:
                problems.append(f"frames.keywords.{key}: {key} is not in frames.group_by")
    calibrate_keys = ("raw", "overscan", "bias", "overscan_model", "overscan_degree")
    if valid(*(f"calibrate.{key}" for key in calibrate_keys)):
        from flatd.calibrate.recipe import settings_problems  # it imports this module

        problems.extend(settings_problems(config.calibrate))

    if valid("output.on_master"):
        problems.extend(command_problems(config.output.on_master))
    metrics = config.status.metrics_file
    if valid("status.metrics_file") and metrics and not metrics.endswith(".prom"):
        problems.append(
            f'status.metrics_file = "{metrics}" must end in .prom (node_exporter\'s textfile '
            "collector reads only *.prom files)"
        )


# -- FITS keyword names ----------------------------------------------------------------------
_KEYWORD_CHARACTERS = re.compile(r"[A-Z0-9_-]+")


def _keyword_entry(where: str, kind: str, value: str, problems: list[str]) -> Any:
    """One entry of a keyword list, upper-cased; `A+B` entries for "wheels" and "pair"."""
    if value != value.strip():
        problems.append(f'{where} = "{value}" has spaces around it; a FITS keyword has none')
        return _INVALID
    parts = value.split("+") if kind in ("wheels", "pair") else [value]
    if kind == "pair" and len(parts) > 2:
        problems.append(f'{where} = "{value}": a binning entry is one keyword or X+Y')
        return _INVALID
    names = [_keyword_name(where, part.strip(), problems) for part in parts]
    if _INVALID in names:
        return _INVALID
    if kind == "group" and names[0] in dialects.PER_FRAME_KEYWORDS:
        problems.append(
            f'{where} = "{value}" changes from frame to frame: as a group key every frame '
            "would be its own group"
        )
        return _INVALID
    return "+".join(names)


def _keyword_name(where: str, text: str, problems: list[str]) -> Any:
    """A FITS keyword as flatd matches it: upper case; `HIERARCH` words single-spaced."""
    name = text.upper()
    if name.startswith("HIERARCH "):
        words = name[len("HIERARCH ") :].split()
        if words and all(_KEYWORD_CHARACTERS.fullmatch(w) for w in words):
            return "HIERARCH " + " ".join(words)
        problems.append(f'{where}: "{text}" is not a HIERARCH keyword (words of A-Z, 0-9, - and _)')
        return _INVALID
    if not _KEYWORD_CHARACTERS.fullmatch(name):
        problems.append(
            f'{where}: "{text}" has characters FITS forbids in a keyword (A-Z, 0-9, - and _ '
            "only; ESO keywords are written HIERARCH ESO ...)"
        )
        return _INVALID
    if len(name) > 8:
        problems.append(
            f'{where}: "{text}" is longer than the 8 characters of a FITS keyword; a longer '
            "one is written HIERARCH ..."
        )
        return _INVALID
    return name


CCDPROC_NAMES = {  # ccdproc.combine's (and the astropy guide's) names for flatd's keys
    "sigma_clip_dev_func": "deviation",
    "sigma_clip_func": "center",
    "sigma_clip_low_thresh": "sigma_low",
    "sigma_clip_high_thresh": "sigma_high",
    "mem_limit": "mem_limit_mb",
    "combine_uncertainty_function": "deviation",
}


KEY_MEANINGS = {  # what users also call flatd's keys, when no spelling is close
    "memory_limit": "mem_limit_mb",
    "memory": "mem_limit_mb",
    "clip": "sigma_clip",
    "clipping": "sigma_clip",
    "rejection": "sigma_clip",
    "combine_method": "method",
    "scaling": "scale",
    "folders": "directories",
    "paths": "directories",
    "globs": "patterns",
    "imagetype_keyword": "type_keywords",
    "frame_type_keywords": "type_keywords",
    "flat_names": "flat_types",
    "group_keys": "group_by",
    "filters": "filter_keywords",
    "camera_keywords": "instrument_keywords",
    "bin_keywords": "binning_keywords",
    "quiet": "quiet_seconds",
    "gap": "gap_minutes",
}


def _suggest(word: str, candidates: typing.Iterable[str], section: str | None = None) -> str:
    candidates = list(candidates)
    prefix = f"{section}." if section else ""
    known = [name for name, key in CCDPROC_NAMES.items() if key in candidates]
    alias = difflib.get_close_matches(word, known, n=1, cutoff=0.85)
    if alias:
        key = CCDPROC_NAMES[alias[0]]
        return f"; did you mean {prefix}{key}? ('{alias[0]}' is ccdproc's name for it)"
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    if not close:
        close = [c for c in candidates if c.startswith(word) or word.startswith(c)][:1]
    if not close and KEY_MEANINGS.get(word.lower()) in candidates:
        close = [KEY_MEANINGS[word.lower()]]
    if not close:
        return ""
    return f"; did you mean {prefix}{close[0]}?"


def _suggest_choice(value: str, choices: tuple[Any, ...], synonyms: dict[str, str]) -> str:
    """The choice a value means (`mean` -> average) before the one it is spelled like."""
    meant = synonyms.get(value.strip().lower())
    if meant is not None:
        return f"; did you mean {meant}? (flatd's word for {value})"
    if value.strip().lower() in choices:
        return f"; did you mean {value.strip().lower()}? (choices are lower case)"
    return _suggest(value, choices)


def _kind_name(kind: type) -> str:
    return {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "string",
        Path: "path",
    }.get(kind, kind.__name__)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    watch = dataclasses.replace(
        config.watch, directories=tuple(resolve(d) for d in config.watch.directories)
    )
    output = dataclasses.replace(config.output, directory=resolve(config.output.directory))
    metrics = config.status.metrics_file
    status = dataclasses.replace(
        config.status,
        file=resolve(config.status.file),
        metrics_file=str(resolve(Path(metrics))) if metrics else "",
    )
    calibrate = dataclasses.replace(
        config.calibrate,
        bias=str(resolve(Path(config.calibrate.bias))) if config.calibrate.bias else "",
        dark=str(resolve(Path(config.calibrate.dark))) if config.calibrate.dark else "",
    )
    return dataclasses.replace(
        config, watch=watch, output=output, status=status, calibrate=calibrate
    )
