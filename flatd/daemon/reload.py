"""What a reload of `flatd run` (SIGHUP, `systemctl reload flatd`) may change, and what
only a restart may.

`plan_reload` compares the running configuration with the one just read from the file
and says what the daemon runs with from now on: every changed key applied, except those
the daemon fixed at start (`RESTART_ONLY`), which keep their running value until a
restart, each with the reason. The service applies the plan (`service.Daemon.reload`);
nothing here touches a running part.

What applies at once, and when:

- `[sequence] quiet_seconds` and `min_frames`, `[combine]`, `[qa]`, `[output] latest`,
  `preview`, `[calibrate]` (but `raw` and `overscan_keywords`): the next combination reads
  them (one in progress finishes with the settings it started with);
- `[output] on_master` and `hook_timeout_seconds`: the next hook run;
- `[status] metrics_file`: the next status write;
- `[log]`: the next log line (a `--log-format`/`--log-level` given on the command line
  still wins);
- `[watch] directories`: watched and scanned at once; a directory no longer listed is
  unwatched and its frames leave the index (as after a restart); its files and masters
  stay on disk untouched, and forgetting them starts no combination.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from flatd.config import Config, ConfigError, cross_field_problems, differences

__all__ = ["RESTART_ONLY", "ReloadPlan", "plan_reload", "restart_reason"]

LOCKED = "the daemon's lock is on it"
READ_AS_INDEXED = "the index holds what was read with it: every file would have to be read again"
RESTART_ONLY: dict[str, str] = {  # `section.*`: every key of the section
    "output.directory": LOCKED,
    "status.file": LOCKED,
    "sequence.keep_days": "the index's horizon and the tree's cold directories are fixed at start",
    "sequence.gap_minutes": "the index cut its sequences with it",
    "frames.*": READ_AS_INDEXED,
    "calibrate.raw": READ_AS_INDEXED,
    "calibrate.overscan_keywords": READ_AS_INDEXED,
    "watch.patterns": "the watched tree was listed with them",
    "watch.recursive": "the watched tree was listed with it",
    "watch.polling": "the file observer is made at start",
    "watch.poll_interval_seconds": "the file observer is made at start",
}


def restart_reason(key: str) -> str:
    """Why `key` (`section.key`) changes only at a restart; "" when a reload applies it."""
    section = key.split(".", 1)[0]
    return RESTART_ONLY.get(key) or RESTART_ONLY.get(f"{section}.*", "")


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does: `config` is what the daemon runs with from now on."""

    config: Config
    changed: list[str] = field(default_factory=list)  # keys applied
    needs_restart: dict[str, str] = field(default_factory=dict)  # key -> why not applied

    def restart_message(self) -> str:
        """One line naming the keys kept until a restart, with why ("" when none)."""
        if not self.needs_restart:
            return ""
        keys = "; ".join(f"{key} ({why})" for key, why in self.needs_restart.items())
        return f"restart flatd to change {keys}; the rest of the file was applied"


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    """The configuration to run with after a reload: `loaded`, with the keys that only a
    restart may change kept at their running values. Raises ConfigError when that mix does
    not hold together (a check that spans a kept key and a changed one)."""
    changed = differences(running, loaded)
    kept = {key: why for key in changed if (why := restart_reason(key))}
    config = loaded
    for key in kept:
        config = _with_value_of(config, running, key)
    problems = cross_field_problems(config)
    if problems:
        source = str(loaded.source or "(no file)")
        held = ", ".join(kept)
        raise ConfigError(source, [f"{p} (with {held} kept until a restart)" for p in problems])
    return ReloadPlan(config, [key for key in changed if key not in kept], kept)


def _with_value_of(config: Config, other: Config, key: str) -> Config:
    """`config` with `key` (`section.key`) set to its value in `other`."""
    section, name = key.split(".", 1)
    value = getattr(getattr(other, section), name)
    return dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **{name: value})}
    )
