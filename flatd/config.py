"""The configuration: TOML in, frozen dataclasses out, every problem named at once.

Each section of SPEC.md is one dataclass below; a field's type and its `metadata`
(allowed choices, bounds) are the whole schema, so the loader, the error messages and
`flatd check-config` all read from the same place.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flatd.hook import command_problems

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
) -> Any:
    meta = {
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_min": exclusive_min,
        "non_empty": non_empty,
        "relative_path": relative_path,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class WatchConfig:
    directories: tuple[Path, ...] = _opt((Path("incoming"),), non_empty=True, relative_path=True)
    recursive: bool = _opt(True)
    patterns: tuple[str, ...] = _opt(
        ("*.fits", "*.fit", "*.fts", "*.fits.fz", "*.fits.gz"), non_empty=True
    )
    polling: bool = _opt(False)
    poll_interval_seconds: float = _opt(2.0, minimum=0.0, exclusive_min=True, maximum=3600.0)


@dataclass(frozen=True)
class FramesConfig:
    imagetyp_keyword: str = _opt("IMAGETYP", non_empty=True)
    flat_types: tuple[str, ...] = _opt(
        ("flat", "flatfield", "flat field", "skyflat", "domeflat", "twiflat"), non_empty=True
    )
    group_by: tuple[str, ...] = _opt(("FILTER", "INSTRUME", "XBINNING", "YBINNING"), non_empty=True)
    date_keyword: str = _opt("DATE-OBS", non_empty=True)


@dataclass(frozen=True)
class SequenceConfig:
    quiet_seconds: float = _opt(300.0, minimum=0.0)
    min_frames: int = _opt(5, minimum=1)
    gap_minutes: float = _opt(120.0, minimum=0.0, exclusive_min=True)


@dataclass(frozen=True)
class CombineConfig:
    method: str = _opt("average", choices=("average", "median"))
    scale: str = _opt("median", choices=("median", "mean", "none"))
    sigma_clip: bool = _opt(True)
    sigma_low: float = _opt(5.0, minimum=0.0, exclusive_min=True)
    sigma_high: float = _opt(5.0, minimum=0.0, exclusive_min=True)
    center: str = _opt("median", choices=("median", "mean"))
    deviation: str = _opt("mad_std", choices=("mad_std", "std", "noise"))
    gain: float = _opt(0.0, minimum=0.0)
    read_noise: float = _opt(0.0, minimum=0.0)
    mem_limit_mb: float = _opt(350.0, minimum=16.0)
    dtype: str = _opt("float32", choices=("float32", "float64"))


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
    format: str = _opt("auto", choices=("json", "console", "auto"))
    level: str = _opt("info", choices=("debug", "info", "warning", "error"))


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
    overscan_keywords: tuple[str, ...] = _opt(("BIASSEC",), non_empty=True)
    trim_keywords: tuple[str, ...] = _opt(("TRIMSEC", "DATASEC"), non_empty=True)


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
        return {
            name: {
                f.name: _plain(getattr(getattr(self, name), f.name))
                for f in dataclasses.fields(cls)
            }
            for name, cls in _sections()
        }


def _plain(value: Any) -> Any:
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


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a parsed TOML document into a Config (paths still as written)."""
    problems: list[str] = []
    sections = dict(_sections())
    built: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in sections:
            problems.append(f"unknown table [{name}]{_suggest(name, sections)}")
            continue
        if not isinstance(value, dict):
            problems.append(f"[{name}] must be a table, not {type(value).__name__}")
            continue
        built[name] = _parse_section(name, sections[name], value, problems)
    if problems:
        raise ConfigError(source, problems)
    config = Config(**built)
    _check_cross_field(config, problems)
    if problems:
        raise ConfigError(source, problems)
    return config


def _parse_section(section: str, cls: type, values: dict[str, Any], problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{section}.{key}"
        if key not in fields:
            problems.append(f"unknown key {where}{_suggest(key, fields, section)}")
            continue
        converted = _convert(where, hints[key], fields[key].metadata, value, problems)
        if converted is not _INVALID:
            kwargs[key] = converted
    return cls(**kwargs)


_INVALID = object()


def _convert(
    where: str, kind: Any, meta: typing.Mapping[str, Any], value: Any, problems: list[str]
) -> Any:
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
        return tuple(items)
    if isinstance(kind, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return _convert_scalar(where, kind, meta, value, problems)


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
        choices = meta.get("choices") or ()
        if choices and value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            problems.append(
                f'{where} = "{value}" is not allowed; choose one of {allowed}'
                f"{_suggest(value, choices)}"
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


def _check_cross_field(config: Config, problems: list[str]) -> None:
    if config.qa.min_level >= config.qa.max_level:
        problems.append(
            f"qa.min_level ({config.qa.min_level}) must be below "
            f"qa.max_level ({config.qa.max_level})"
        )
    if len(set(k.upper() for k in config.frames.group_by)) != len(config.frames.group_by):
        problems.append("frames.group_by lists a keyword twice")
    problems.extend(command_problems(config.output.on_master))
    metrics = config.status.metrics_file
    if metrics and not metrics.endswith(".prom"):
        problems.append(
            f'status.metrics_file = "{metrics}" must end in .prom (node_exporter\'s textfile '
            "collector reads only *.prom files)"
        )


CCDPROC_NAMES = {  # ccdproc.combine's (and the astropy guide's) names for flatd's keys
    "sigma_clip_dev_func": "deviation",
    "sigma_clip_func": "center",
    "sigma_clip_low_thresh": "sigma_low",
    "sigma_clip_high_thresh": "sigma_high",
    "mem_limit": "mem_limit_mb",
    "combine_uncertainty_function": "deviation",
}


def _suggest(word: str, candidates: typing.Iterable[str], section: str | None = None) -> str:
    candidates = list(candidates)
    known = [name for name, key in CCDPROC_NAMES.items() if key in candidates]
    alias = difflib.get_close_matches(word, known, n=1, cutoff=0.85)
    if alias:
        key = CCDPROC_NAMES[alias[0]]
        return (
            f"; did you mean {section + '.' if section else ''}{key}? ('{alias[0]}' is "
            f"ccdproc's name for it)"
        )
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    if not close:
        close = [c for c in candidates if c.startswith(word) or word.startswith(c)][:1]
    if not close:
        return ""
    return f"; did you mean {section + '.' if section else ''}{close[0]}?"


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
    return dataclasses.replace(config, watch=watch, output=output, status=status)
