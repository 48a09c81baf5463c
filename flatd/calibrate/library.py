"""Master biases and darks: which file calibrates a sequence.

`[calibrate] bias` (and `dark`) names one master file, or a directory of them. From a
directory the newest master taken before the sequence (by `DATE-OBS`, else the file's
modification time) with the calibrated frames' shape and binning is used; files whose image
type says something else (a flat, a dark among biases) are not candidates. A named file is
used whatever its date, but must fit the same way. The headers of a directory are read once
per file version (path, size, mtime), so `refresh()` after a change costs little.

A master is what the astropy guide makes: overscan-subtracted (when the flats are), trimmed,
combined, in ADU; a dark also bias-subtracted, with its `EXPTIME`, so that it can be scaled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from flatd.calibrate.detect import detect_raw, header_values
from flatd.calibrate.errors import CalibrationError, CalibrationUnavailable

Kind = Literal["bias", "dark"]
TYPE_KEYWORDS = ("IMAGETYP", "OBSTYPE", "FRAME", "DATA-TYP")
TYPE_WORDS: dict[str, tuple[str, ...]] = {"bias": ("bias", "zero"), "dark": ("dark",)}
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz", ".fit.gz", ".fz")
ADU_UNITS = frozenset({"", "adu", "count", "counts", "ct", "dn"})
MAX_LISTED = 3  # candidates named in a "none fits" reason


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

    def select(
        self, shape: tuple[int, int], binning: tuple[int, int] | None, before: datetime
    ) -> MasterFile:
        """The master for calibrated frames of `shape` (ny, nx) and `binning` (x, y) of a
        sequence starting at `before` (aware). CalibrationUnavailable when none fits yet,
        CalibrationError when the one named file does not fit."""
        if self.source.is_dir():
            return self._select_from_directory(shape, binning, before)
        if not self.source.exists():
            raise CalibrationUnavailable(f"master {self.kind} {self.source} does not exist (yet)")
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
            elif entry.date > before:
                notes.append(f"{entry.path.name} taken {_iso(entry.date)}, after the sequence")
            else:
                usable.append(entry)
        if usable:
            return max(usable, key=lambda m: (m.date, m.path.name))
        listed = "; ".join(notes[:MAX_LISTED]) + ("; …" if len(notes) > MAX_LISTED else "")
        binning_text = f"binning {binning[0]}x{binning[1]}" if binning else "any binning"
        raise CalibrationUnavailable(
            f"no master {self.kind} in {self.source} for {_size(shape)}, {binning_text}, "
            f"taken before {_iso(before)} (yet)" + (f": {listed}" if listed else "")
        )

    def _scan(self) -> list[MasterFile | str]:
        """Every master of this kind in the directory (cached per file version), and a
        note for each unreadable one; files of another image type are left out."""
        seen: dict[Path, tuple[tuple[int, int], MasterFile | str]] = {}
        for path in sorted(self.source.iterdir()):
            if not path.name.lower().endswith(FITS_SUFFIXES) or path.name.startswith("."):
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


class _OtherType(CalibrationError):
    """A file whose image type says it is not this kind of master."""


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


def binning_of(cards: Mapping[str, Any]) -> tuple[int, int] | None:
    """(x, y) binning from XBINNING/YBINNING, CCDSUM = '2 2' or BINX/BINY; None if absent.
    (The frames reader's binning role replaces this once raw frames are wired in.)"""
    ccdsum = str(cards.get("CCDSUM", "")).split()
    candidates: list[tuple[Any, Any]] = [
        (cards.get("XBINNING"), cards.get("YBINNING")),
        (ccdsum[0], ccdsum[1]) if len(ccdsum) == 2 else (None, None),
        (cards.get("BINX"), cards.get("BINY")),
    ]
    for x, y in candidates:
        try:
            return int(x), int(y)
        except (ValueError, TypeError):
            continue
    return None


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
