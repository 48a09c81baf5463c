"""One file's header to a `Frame` (or a `Skip` saying why not), cheaply.

The stages, in order: the raw header blocks (`cards`: only the wanted cards parsed), the
frame type (`frametype`), the group's roles (`roles`), the image geometry and the file's
length, raw or not (`flatd.calibrate.detect`: a raw flat is refused unless `[calibrate]
raw = "calibrate"`), the date (`dates`). The same pass records where the image data lies, so the
engine can read it band by band without opening the file through astropy again, and
checks the file is long enough to hold its data (a truncated or half-written file is
never indexed as complete). Indexing costs a few hundredths of a millisecond per file
plus the read itself, not the ~4.5 ms of a full `ImageFileCollection` entry.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import structlog

from flatd.frames.cards import Broken, Cards, int_value, number_value, read_header
from flatd.frames.dates import ObservationDate, observation_date
from flatd.frames.frametype import frame_type
from flatd.frames.model import Compression, Frame, Skip, SkipKind
from flatd.frames.roles import every_keyword, keywords_for, read_roles

if TYPE_CHECKING:
    from flatd.calibrate.detect import RawSigns
    from flatd.config import CalibrateConfig, FramesConfig

log = structlog.get_logger("flatd.frames")

EXTRA_KEYWORDS = ("GAIN", "RDNOISE", "SATURATE", "EXPTIME")
STRUCTURAL = frozenset(
    {
        "SIMPLE",
        "EXTEND",
        "XTENSION",
        "BITPIX",
        "NAXIS",
        "PCOUNT",
        "BSCALE",
        "BZERO",
        "ZIMAGE",
        "ZBITPIX",
        "ZNAXIS",
        "FLATDVER",
        "COMBINED",
        *(f"{prefix}NAXIS{i}" for prefix in ("", "Z") for i in range(1, 10)),
    }
)


DEFAULT_OVERSCAN_KEYWORDS = ("BIASSEC",)


def read_frame(
    path: Path, config: FramesConfig, calibrate: CalibrateConfig | None = None
) -> Frame | Skip:
    """Classify one file from its header: a usable flat, or why it is not. A raw flat is
    refused unless `calibrate.raw` is "calibrate" (None: the defaults, which refuse it)."""
    try:
        stat = path.stat()
    except OSError as exc:
        return Skip(path, SkipKind.REFUSED, f"cannot stat: {exc.strerror or exc}")
    try:
        return _read(path, stat, config, calibrate)
    except Broken as exc:
        return Skip(
            path, SkipKind.REFUSED, str(exc), stat.st_size, stat.st_mtime_ns, exc.incomplete
        )
    except EOFError as exc:
        return Skip(
            path, SkipKind.REFUSED, f"truncated: {exc}", stat.st_size, stat.st_mtime_ns, True
        )
    except (OSError, gzip.BadGzipFile) as exc:
        return Skip(path, SkipKind.REFUSED, f"unreadable: {exc}", stat.st_size, stat.st_mtime_ns)


def _read(
    path: Path, stat: os.stat_result, config: FramesConfig, calibrate: CalibrateConfig | None
) -> Frame | Skip:
    if stat.st_size == 0:
        raise Broken("empty file", incomplete=True)
    overscan_keywords = calibrate.overscan_keywords if calibrate else DEFAULT_OVERSCAN_KEYWORDS
    cards, hdu, data_offset, compression = _image_header(path, config, overscan_keywords)
    kind = frame_type(cards, config)
    if kind.not_flat:
        return Skip(path, SkipKind.IGNORED, kind.not_flat, stat.st_size, stat.st_mtime_ns)
    roles = read_roles(cards, config)
    missing = [key for key in roles.missing() if key in config.required]
    if missing:
        reason = _missing_reason(missing, config)
        return Skip(path, SkipKind.REFUSED, reason, stat.st_size, stat.st_mtime_ns)
    shape, bitpix, data_bytes = _geometry(cards, compression)
    if compression != "gzip" and stat.st_size < data_offset + data_bytes:
        raise Broken(
            f"truncated: {data_offset + data_bytes} bytes expected, {stat.st_size} on disk",
            incomplete=True,
        )
    signs = raw_signs(cards, overscan_keywords)
    raw = signs is not None and signs.is_raw
    if signs is not None and raw and (calibrate is None or calibrate.raw != "calibrate"):
        return Skip(path, SkipKind.REFUSED, signs.reason(), stat.st_size, stat.st_mtime_ns)
    date = observation_date(cards, config, stat.st_mtime)
    if date.unreadable:
        _warn_date(path, cards, date)
    return Frame(
        path=path,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        imagetyp=kind.value,
        group=roles.group,
        date=date.when,
        date_from_header=date.from_header,
        shape=shape,
        bitpix=bitpix,
        hdu=hdu,
        compression=compression,
        data_offset=data_offset if compression != "tile" else None,
        bscale=number_value(cards, "BSCALE", 1.0),
        bzero=number_value(cards, "BZERO", 0.0),
        extras=_extras(cards),
        type_keyword=kind.keyword,
        sources=roles.sources,
        binning=roles.binning,
        date_source=date.source,
        date_note=date.problem,
        raw=raw,
        overscan=(signs.overscan_keyword or "", signs.overscan_section or "")
        if signs is not None and raw
        else None,
    )


def raw_signs(cards: Cards, overscan_keywords: tuple[str, ...]) -> RawSigns | None:
    """What the header says about the frame's calibration (`flatd.calibrate.detect`), from
    its detection cards alone; None, at once, when it has no overscan section."""
    overscan, records = _detection_names(overscan_keywords)
    if not any(name in cards for name in overscan):
        return None
    # imported here: flatd.calibrate imports the configuration, which imports this package
    from flatd.calibrate.detect import detect_raw

    found = {name: cards[name] for name in (*overscan, *records) if name in cards}
    return detect_raw(found, overscan_keywords)


@functools.lru_cache(maxsize=16)
def _detection_names(overscan_keywords: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The reader's names of the overscan keywords and of the calibration records."""
    from flatd.calibrate.detect import card_name, detection_keywords  # see raw_signs

    def named(names: Iterable[str]) -> tuple[str, ...]:
        return tuple(f"HIERARCH {n}" if len(n) > 8 or " " in n else n for n in names)

    overscan = [card_name(k) for k in overscan_keywords]
    records = sorted(detection_keywords(overscan_keywords) - set(overscan))
    return named(dict.fromkeys(overscan)), named(records)


def _image_header(
    path: Path, config: FramesConfig, overscan_keywords: tuple[str, ...]
) -> tuple[Cards, int, int, Compression]:
    """The cards of the header that describes the image (the primary header, merged with
    the first extension's when the primary holds no data), the image's HDU, its data
    offset and how it is stored."""
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if gzipped else raw  # type: ignore[assignment]
        wanted = wanted_keywords(config, overscan_keywords)
        primary, primary_end = read_header(stream, first=True, wanted=wanted)
        compression: Compression = "gzip" if gzipped else "none"
        if int_value(primary, "NAXIS", 0) != 0 or primary.get("EXTEND") is not True:
            return primary, 0, primary_end, compression
        stream.seek(primary_end)
        ext, ext_end = read_header(stream, first=False, wanted=wanted)
    if ext.get("XTENSION") == "BINTABLE" and ext.get("ZIMAGE") is True:
        compression = "tile"
    elif ext.get("XTENSION") != "IMAGE":
        raise Broken(f"no image: first extension is a {ext.get('XTENSION')} table")
    return {**primary, **ext}, 1, ext_end, compression


def _extras(cards: Cards) -> dict[str, float]:
    return {
        key: float(value)
        for key in EXTRA_KEYWORDS
        if isinstance(value := cards.get(key), int | float) and not isinstance(value, bool)
    }


def _missing_reason(keys: list[str], config: FramesConfig) -> str:
    parts = [f"{key} (looked for {', '.join(keywords_for(key, config))})" for key in keys]
    return f"flat without {'; '.join(parts)}: frames.required"


def _warn_date(path: Path, cards: Cards, date: ObservationDate) -> None:
    log.warning(
        "date_unreadable",
        path=str(path),
        card=date.unreadable,
        value=str(cards.get(date.unreadable)),
        reason=date.problem,
        used=date.source or "file time",
    )


def _geometry(cards: Cards, compression: Compression) -> tuple[tuple[int, int], int, int]:
    prefix = "Z" if compression == "tile" else ""
    naxis = int_value(cards, prefix + "NAXIS", 0)
    axes = [int_value(cards, f"{prefix}NAXIS{i}", 0) for i in range(1, naxis + 1)]
    if naxis == 0 or 0 in axes:
        raise Broken("no image data")
    if naxis != 2 and not (naxis > 2 and all(a == 1 for a in axes[2:])):
        raise Broken(f"not a 2-D image: NAXIS = {naxis} ({' x '.join(map(str, axes))})")
    bitpix = int_value(cards, prefix + "BITPIX", 0)
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise Broken(f"invalid BITPIX {bitpix}")
    if compression == "tile":
        data_bytes = int_value(cards, "NAXIS1", 0) * int_value(cards, "NAXIS2", 0) + int_value(
            cards, "PCOUNT", 0
        )
    else:
        data_bytes = axes[0] * axes[1] * abs(bitpix) // 8
    return (axes[1], axes[0]), bitpix, data_bytes


@functools.lru_cache(maxsize=16)
def wanted_keywords(
    config: FramesConfig, overscan_keywords: tuple[str, ...] = DEFAULT_OVERSCAN_KEYWORDS
) -> frozenset[bytes]:
    """The keywords whose values `read_frame` uses; every other card is skipped unparsed.
    The raw-frame records longer than 8 characters (ccdproc's `SUBTRACT_OVERSCAN`) are
    HIERARCH cards in a file, and wanted by that name too."""
    names = {
        *STRUCTURAL,
        *EXTRA_KEYWORDS,
        *config.type_keywords,
        *config.date_keywords,
        *config.time_keywords,
        *every_keyword(config),
        *(name for names in _detection_names(overscan_keywords) for name in names),
    }
    return frozenset(name.encode("ascii", "replace") for name in names)
