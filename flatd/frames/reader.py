"""One file's header to a `Frame` (or a `Skip` saying why not), cheaply.

The stages, in order: the raw header blocks of every HDU (`cards`: only the wanted cards
parsed; `extensions`: which HDUs are the frame's image planes, for a mosaic or a
multi-amplifier camera several), the frame type (`frametype`), the group's roles
(`roles`), the image geometry and the file's length, raw or not
(`flatd.calibrate.detect`: a raw flat is refused unless `[calibrate] raw = "calibrate"`;
a raw frame of several planes always), the date (`dates`). The same pass records where
each plane's data lies, so the engine can read it band by band without opening the file
through astropy again, and checks the file is long enough to hold it (a truncated or
half-written file is never indexed as complete). Indexing costs a few hundredths of a
millisecond per file plus the read itself, not the ~4.5 ms of a full
`ImageFileCollection` entry.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

import structlog

from flatd.frames.cards import Broken, Cards, int_value, number_value
from flatd.frames.dates import ObservationDate, observation_date
from flatd.frames.extensions import (
    Hdu,
    image_planes,
    missing_extensions,
    plane_names,
    read_hdus,
)
from flatd.frames.frametype import frame_type
from flatd.frames.model import Compression, Extension, Frame, Skip, SkipKind
from flatd.frames.roles import every_keyword, keywords_for, read_roles, reader_name

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
        "GCOUNT",
        "EXTNAME",
        "EXTVER",
        "NEXTEND",
        "DETSEC",
        "FLATDVER",
        "COMBINED",
        *(f"{prefix}NAXIS{i}" for prefix in ("", "Z") for i in range(1, 10)),
    }
)


DEFAULT_OVERSCAN_KEYWORDS = ("BIASSEC",)


def read_frame(
    path: Path,
    config: FramesConfig,
    calibrate: CalibrateConfig | None = None,
    *,
    settled: bool = False,
) -> Frame | Skip:
    """Classify one file from its header: a usable flat, or why it is not. A raw flat is
    refused unless `calibrate.raw` is "calibrate" (None: the defaults, which refuse it).

    A primary header whose NEXTEND promises more extensions than the file holds means a
    file still being written (a Skip marked incomplete), unless the file is `settled`
    (it stood still, or a one-shot command reads files at rest): then NEXTEND is only
    wrong (extensions split off a mosaic keep it), and the extensions there are read."""
    try:
        stat = path.stat()
    except OSError as exc:
        return Skip(path, SkipKind.REFUSED, f"cannot stat: {exc.strerror or exc}")
    try:
        return _read(path, stat, config, calibrate, settled)
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
    path: Path,
    stat: os.stat_result,
    config: FramesConfig,
    calibrate: CalibrateConfig | None,
    settled: bool,
) -> Frame | Skip:
    if stat.st_size == 0:
        raise Broken("empty file", incomplete=True)
    overscan_keywords = calibrate.overscan_keywords if calibrate else DEFAULT_OVERSCAN_KEYWORDS
    hdus, compression = _headers(path, config, overscan_keywords, stat.st_size)
    found = _image_hdus(hdus, path, settled)
    cards = found[0].cards if found[0].number == 0 else {**hdus[0].cards, **found[0].cards}
    kind = frame_type(cards, config)
    if kind.not_flat:
        return Skip(path, SkipKind.IGNORED, kind.not_flat, stat.st_size, stat.st_mtime_ns)
    roles = read_roles(cards, config)
    missing = [key for key in roles.missing() if key in config.required]
    if missing:
        reason = _missing_reason(missing, config)
        return Skip(path, SkipKind.REFUSED, reason, stat.st_size, stat.st_mtime_ns)
    first = _stored(found[0], compression)
    extensions = _extensions(found, hdus[0].cards, compression) if len(found) > 1 else []
    _check_length(hdus, compression, stat.st_size)
    signs = raw_signs(cards, overscan_keywords)
    raw = signs is not None and signs.is_raw
    names = [e.name for e in extensions]
    if extensions and (why := _raw_mosaic(found, names, hdus[0].cards, overscan_keywords)):
        return Skip(path, SkipKind.REFUSED, why, stat.st_size, stat.st_mtime_ns)
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
        shape=first.shape,
        bitpix=first.bitpix,
        hdu=found[0].number,
        compression=first.compression,
        data_offset=first.data_offset,
        bscale=first.bscale,
        bzero=first.bzero,
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
        extensions=tuple(extensions),
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
        return tuple(reader_name(n) for n in names)

    overscan = [card_name(k) for k in overscan_keywords]
    records = sorted(detection_keywords(overscan_keywords) - set(overscan))
    return named(dict.fromkeys(overscan)), named(records)


def _headers(
    path: Path, config: FramesConfig, overscan_keywords: tuple[str, ...], size: int
) -> tuple[list[Hdu], Compression]:
    """Every HDU's wanted cards (`extensions.read_hdus`) and whether the file is gzipped."""
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        gzip_size = _gzip_size(raw, size) if gzipped else None
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if gzipped else raw  # type: ignore[assignment]
        wanted = wanted_keywords(config, overscan_keywords)
        hdus = read_hdus(stream, wanted, None if gzipped else size, gzip_size)
    return hdus, "gzip" if gzipped else "none"


def _gzip_size(raw: BinaryIO, size: int) -> int | None:
    """A gzip file's ISIZE: its uncompressed length modulo 2**32 (RFC 1952)."""
    if size < 18:
        return None
    raw.seek(size - 4)
    return int.from_bytes(raw.read(4), "little")


class _Stored(NamedTuple):
    """Where and how one image plane's values are stored."""

    shape: tuple[int, int]
    bitpix: int
    compression: Compression
    data_offset: int | None
    bscale: float
    bzero: float


def _image_hdus(hdus: list[Hdu], path: Path, settled: bool) -> list[Hdu]:
    """The HDUs of the frame's image planes (the primary HDU when there is none, for
    `_geometry` to say why). Raises Broken when the first extension is a table and no HDU
    an image, or (unless `settled`) the primary header promises more extensions than the
    file holds."""
    if len(hdus) == 1 and "NEXTEND" not in hdus[0].cards:  # most files: one image
        return hdus
    found = image_planes(hdus)
    if not found and len(hdus) > 1 and hdus[1].cards.get("XTENSION") != "IMAGE":
        raise Broken(f"no image: first extension is a {hdus[1].cards.get('XTENSION')} table")
    if missing := missing_extensions(hdus):
        if not settled:
            raise Broken(missing, incomplete=True)
        log.info("nextend_wrong", path=str(path), reason=missing.removeprefix("truncated: "))
    return found or hdus[:1]


def _stored(hdu: Hdu, compression: Compression) -> _Stored:
    """A plane's geometry (Broken when it is not a 2-D image) and storage."""
    stored: Compression = "tile" if hdu.plane_kind == "tile" else compression
    shape, bitpix, _ = _geometry(hdu.cards, stored)
    return _Stored(
        shape,
        bitpix,
        stored,
        hdu.data_offset if stored != "tile" else None,
        number_value(hdu.cards, "BSCALE", 1.0),
        number_value(hdu.cards, "BZERO", 0.0),
    )


def _extensions(found: list[Hdu], primary: Cards, compression: Compression) -> list[Extension]:
    """Every image plane of a frame of several, named, each with its geometry checked
    (Broken naming the first that is not a 2-D image) and its own cards over the primary
    header's."""
    planes = []
    for name, hdu in zip(plane_names(found), found, strict=True):
        try:
            stored = _stored(hdu, compression)
        except Broken as exc:
            raise Broken(f"extension {hdu.number} ({name}): {exc}") from None
        cards = {**primary, **hdu.cards}
        detsec = str(hdu.cards.get("DETSEC") or "").strip()
        planes.append(Extension(name, hdu.number, *stored, extras=_extras(cards), detsec=detsec))
    return planes


def _check_length(hdus: list[Hdu], compression: Compression, size: int) -> None:
    """Raise Broken (incomplete) when the file is shorter than its last HDU's data."""
    last = hdus[-1]
    if compression != "gzip" and size < last.data_offset + last.data_bytes:
        raise Broken(
            f"truncated: {last.data_offset + last.data_bytes} bytes expected, {size} on disk",
            incomplete=True,
        )


def _raw_mosaic(
    found: list[Hdu], names: list[str], primary: Cards, overscan_keywords: tuple[str, ...]
) -> str:
    """Why a frame of several image planes with a raw one cannot be taken ("" when none
    is raw): the calibration stage calibrates single-image raw frames only."""
    for hdu, name in zip(found, names, strict=True):
        signs = raw_signs({**primary, **hdu.cards}, overscan_keywords)
        if signs is not None and signs.is_raw:
            return (
                f"raw multi-extension frame ({signs.overscan_keyword} = "
                f"'{signs.overscan_section}' in {name}, no record of bias "
                f"removal): flatd calibrates single-image raw frames only; calibrate each "
                f"extension first (e.g. ccdproc per extension) or write them as calibrated"
            )
    return ""


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
