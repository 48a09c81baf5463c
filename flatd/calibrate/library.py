"""Master biases and darks: which file calibrates a sequence.

`[calibrate] bias` (and `dark`) names one master file, or a directory of them. From a
directory the newest master taken before the sequence (by `DATE-OBS`) with the calibrated
frames' shape and binning is used; files whose image type says something else (a flat, a
dark among biases) are not candidates. A master without a date fits any sequence (its
file's time says when it was copied, not when its frames were taken): it is used when no
dated one does, the newest file first. A named file is
used whatever its date, but must fit the same way. The headers of a directory are read once
per file version (path, size, mtime), so `refresh()` after a change costs little.

A master is what the astropy guide makes: overscan-subtracted (when the flats are), trimmed,
combined, in ADU; a dark also bias-subtracted, with its `EXPTIME`, so that it can be scaled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from flatd.calibrate.detect import detect_raw, header_values
from flatd.calibrate.errors import CalibrationError, CalibrationUnavailable
from flatd.frames import binning_of

Kind = Literal["bias", "dark"]
TYPE_KEYWORDS = ("IMAGETYP", "OBSTYPE", "FRAME", "DATA-TYP")
TYPE_WORDS: dict[str, tuple[str, ...]] = {"bias": ("bias", "zero"), "dark": ("dark",)}
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz", ".fit.gz", ".fz")
ADU_UNITS = frozenset({"", "adu", "count", "counts", "ct", "dn"})
MAX_LISTED = 3  # candidates named in a "none fits" reason
FITS_BLOCK = 2880


@dataclass(frozen=True)
class MasterFile:
    """A master bias or dark as its header describes it."""

    path: Path
    kind: Kind
    shape: tuple[int, int]  # (ny, nx)
    binning: tuple[int, int] | None  # (x, y); None when the header does not say
    date: datetime  # UTC: DATE-OBS, else the file's modification time
    date_from_header: bool
    exptime: float | None
    hdu: int

    def describe(self) -> str:
        binning = f"binning {self.binning[0]}x{self.binning[1]}" if self.binning else "no binning"
        return f"{self.path.name} ({_size(self.shape)}, {binning}, {_iso(self.date)})"


def read_master(path: Path, kind: Kind) -> MasterFile:
    """A master's header facts; CalibrationError when the file is no usable master."""
    from astropy.io import fits

    try:
        with fits.open(path, lazy_load_hdus=True) as hdul:
            hdu = next((i for i, h in enumerate(hdul) if _is_image(h)), None)
            if hdu is None:
                raise CalibrationError(f"master {kind} {path.name} holds no 2-D image")
            header = hdul[hdu].header
            cards = header_values(header)
            shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
            _check_whole(path, kind, hdul.fileinfo(hdu))
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise CalibrationError(f"master {kind} {path.name} is unreadable: {exc}") from None
    _check_usable(path, kind, cards)
    date, from_header = _date(cards, path)
    return MasterFile(
        path=path,
        kind=kind,
        shape=shape,
        binning=binning_of(cards),
        date=date,
        date_from_header=from_header,
        exptime=exposure_of(cards),
        hdu=hdu,
    )


class MasterLibrary:
    """The configured master biases (or darks): one file, or every master in a directory."""

    def __init__(self, source: Path, kind: Kind) -> None:
        self.source = source
        self.kind = kind
        self._known: dict[Path, tuple[tuple[int, int], MasterFile | str]] = {}

    def version(self) -> tuple[tuple[str, int, int], ...]:
        """What the source holds now, cheaply (names, sizes and modification times, from
        the directory listing): it changes when a master arrives, changes or leaves."""
        try:
            if not self.source.is_dir():
                stat = self.source.stat()
                return ((self.source.name, stat.st_size, stat.st_mtime_ns),)
            entries = []
            with os.scandir(self.source) as listing:
                for entry in listing:
                    if _candidate_name(entry.name):
                        with contextlib.suppress(OSError):
                            stat = entry.stat()
                            entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
            return tuple(sorted(entries))
        except OSError:
            return ()

    def describe(self) -> str:
        """One line on what the source holds, for the start-up log and check-config."""
        if self.source.is_dir():
            masters = [m for m in self._scan() if isinstance(m, MasterFile)]
            return f"{len(masters)} master {self.kind} file(s) in {self.source}"
        if self.source.exists():
            return f"master {self.kind} {self.source}"
        return f"master {self.kind} {self.source} does not exist (yet)"

    def select(
        self, shape: tuple[int, int], binning: tuple[int, int] | None, before: datetime
    ) -> MasterFile:
        """The master for calibrated frames of `shape` (ny, nx) and `binning` (x, y) of a
        sequence starting at `before` (aware). CalibrationUnavailable when none fits yet,
        CalibrationError when the one named file does not fit."""
        if self.source.is_dir():
            return self._select_from_directory(shape, binning, before)
        if not self.source.exists():
            raise CalibrationUnavailable(
                f"master {self.kind} {self.source} does not exist (yet)", self.kind
            )
        master = read_master(self.source, self.kind)
        problem = misfit(master, shape, binning)
        if problem:
            raise CalibrationError(f"master {self.kind} {problem}")
        return master

    def _select_from_directory(
        self, shape: tuple[int, int], binning: tuple[int, int] | None, before: datetime
    ) -> MasterFile:
        usable, notes = [], []
        for entry in self._scan():
            if isinstance(entry, str):
                notes.append(entry)
            elif problem := misfit(entry, shape, binning):
                notes.append(problem)
            elif entry.date_from_header and entry.date > before:
                notes.append(f"{entry.path.name} taken {_iso(entry.date)}, after the sequence")
            else:
                usable.append(entry)
        if usable:  # a dated master before the sequence first, else the newest undated one
            return max(usable, key=lambda m: (m.date_from_header, m.date, m.path.name))
        listed = "; ".join(notes[:MAX_LISTED]) + ("; …" if len(notes) > MAX_LISTED else "")
        binning_text = f"binning {binning[0]}x{binning[1]}" if binning else "any binning"
        raise CalibrationUnavailable(
            f"no master {self.kind} in {self.source} for {_size(shape)}, {binning_text}, "
            f"taken before {_iso(before)} (yet)" + (f": {listed}" if listed else ""),
            self.kind,
        )

    def _scan(self) -> list[MasterFile | str]:
        """Every master of this kind in the directory (cached per file version), and a
        note for each unreadable one; files of another image type are left out."""
        seen: dict[Path, tuple[tuple[int, int], MasterFile | str]] = {}
        for path in sorted(self.source.iterdir()):
            if not _candidate_name(path.name):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            version = (stat.st_size, stat.st_mtime_ns)
            known = self._known.get(path)
            if known is None or known[0] != version:
                known = (version, self._read(path))
            seen[path] = known
        self._known = seen
        return [entry for _, entry in seen.values() if entry != ""]

    def _read(self, path: Path) -> MasterFile | str:
        try:
            return read_master(path, self.kind)
        except _OtherType:
            return ""
        except CalibrationError as exc:
            return exc.reason


def _check_whole(path: Path, kind: Kind, info: Mapping[str, Any] | None) -> None:
    """A master still being written (shorter than its header says) is not used yet: the
    library's version changes when it is complete. (Not checked for gzip files, whose
    offsets are in the decompressed stream.)"""
    if info is None or path.name.lower().endswith(".gz"):
        return
    end = int(info["datLoc"]) + int(info["datSpan"])
    if end > path.stat().st_size + FITS_BLOCK - 1:  # the last block's padding may be missing
        raise CalibrationError(f"master {kind} {path.name} is truncated (still being written?)")


class _OtherType(CalibrationError):
    """A file whose image type says it is not this kind of master."""


def _candidate_name(name: str) -> bool:
    """A FITS file's name, not a hidden one (a temporary being written)."""
    return name.lower().endswith(FITS_SUFFIXES) and not name.startswith(".")


def _is_image(hdu: Any) -> bool:
    header = hdu.header
    return header.get("NAXIS") == 2 and header.get("XTENSION", "IMAGE") in ("IMAGE", "BINTABLE")


def _check_usable(path: Path, kind: Kind, cards: Mapping[str, Any]) -> None:
    image_type = next((str(cards[k]) for k in TYPE_KEYWORDS if k in cards), None)
    if image_type is not None and not any(w in image_type.lower() for w in TYPE_WORDS[kind]):
        raise _OtherType(f"{path.name} is a '{image_type.strip()}', not a master {kind}")
    signs = detect_raw(cards)
    if signs.is_raw:
        raise CalibrationError(
            f"master {kind} {path.name} is itself raw ({signs.overscan_keyword} and no "
            f"overscan/bias subtraction recorded): calibrate and combine its frames first"
        )
    unit = str(cards.get("BUNIT", "")).strip().lower()
    if unit not in ADU_UNITS:
        raise CalibrationError(
            f"master {kind} {path.name} is in '{cards['BUNIT']}', raw frames are in ADU"
        )
    if kind == "dark" and exposure_of(cards) is None:
        raise CalibrationError(f"master dark {path.name} has no EXPTIME to scale it by")


def misfit(master: MasterFile, shape: tuple[int, int], binning: tuple[int, int] | None) -> str:
    """Why `master` does not fit calibrated frames of `shape` and `binning` ("" if it does)."""
    if master.shape != shape:
        return f"{master.path.name} is {_size(master.shape)}, the calibrated frames {_size(shape)}"
    if binning and master.binning and master.binning != binning:
        return (
            f"{master.path.name} is binned {master.binning[0]}x{master.binning[1]}, the "
            f"frames {binning[0]}x{binning[1]}"
        )
    return ""


def exposure_of(cards: Mapping[str, Any]) -> float | None:
    """Exposure time in seconds from EXPTIME or EXPOSURE; None if absent or unreadable."""
    for keyword in ("EXPTIME", "EXPOSURE"):
        value = cards.get(keyword)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _date(cards: Mapping[str, Any], path: Path) -> tuple[datetime, bool]:
    value = cards.get("DATE-OBS")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            parsed = None
        if parsed is not None:
            return (parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed), True
    return datetime.fromtimestamp(os.stat(path).st_mtime, UTC), False


def _size(shape: tuple[int, int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
