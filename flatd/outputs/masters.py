"""Master flat files: their names, their contents, their atomic publication.

A master is `<output>/flat_<group>_<start>.fits`: a primary HDU (float32, median 1) that
`CCDData.read` and `ccdproc.flat_correct` take as it is, `MASK` and `UNCERT` extensions,
and an `INPUTS` table with one row per input frame (used or not, and why; a duplicate of
an input at another path is a row "duplicate of ..."), which is also how the daemon knows
after a restart which frames a master holds. This is the only module that knows the
`INPUTS` columns: `read_master_file` gives the rest of flatd a `MasterFile`, whose
`InputRow`s say which frames (by content, `CHECKSUM`) the master claims. Every value that
comes from a header is made safe before it reaches a path.

A mosaic's master (frames of several image extensions) keeps its inputs' layout: the
primary HDU holds the provenance header and no data; then, for each input extension in
input order, its image under the input's EXTNAME (or IM1, IM2, ...), `<NAME>_UNCERT` and
`<NAME>_MASK`; then INPUTS. `CCDData.read(path, hdu=NAME, hdu_uncertainty=NAME +
"_UNCERT", hdu_mask=NAME + "_MASK")` reads one extension whole. (`CCDData.read(path)`
alone gives the first extension's data, astropy's first HDU with data, without its
uncertainty and mask: a primary HDU holding one extension's data would hide which one.)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import structlog

from flatd import __version__
from flatd.atomic import TEMP_PREFIX, TEMP_SUFFIX, atomic_write, fsync_directory
from flatd.config import Config
from flatd.engine import CombineResult, ExtensionResult, MasterPlane
from flatd.frames import Frame, GroupKey, GroupValue
from flatd.frames.roles import reader_name
from flatd.outputs.cards import COMMENTARY, checked_headers
from flatd.outputs.settings import SETTINGS
from flatd.reasons import one_line, reason_of
from flatd.status.schema import utc_iso

if TYPE_CHECKING:
    from astropy.io import fits

    from flatd.calibrate.provenance import Provenance
    from flatd.inputs.index import Duplicate

log = structlog.get_logger("flatd.outputs.masters")

SAFE_CHARACTER = re.compile(r"[^A-Za-z0-9.-]")
MASTER_NAME = re.compile(r"flat_(?P<group>.+)_(?P<start>\d{8}T\d{6})\.fits")
DUPLICATE_OF = "duplicate of "
MAX_VALUE_LENGTH = 32
LATEST = "latest"
UNCERTAINTY_CARD = ("UTYPE", "StdDevUncertainty", "standard deviation of the mean")
INHERIT_CARD = ("INHERIT", True, "the primary header's cards apply here too")
STRUCTURAL_KEYWORDS = {
    "SIMPLE",
    "XTENSION",
    "BITPIX",
    "NAXIS",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "BSCALE",
    "BZERO",
    "BLANK",
    "BUNIT",
    "CHECKSUM",
    "DATASUM",
    "EXTNAME",
    "EXTVER",
    "TFIELDS",
    "THEAP",
    "ZIMAGE",
    "ZBITPIX",
    "ZNAXIS",
    "ZTILE",
    "ZCMPTYPE",
    "ZQUANTIZ",
    "ZDITHER0",
    "ZSIMPLE",
    "ZEXTEND",
    "ZBLANK",
    "ZSCALE",
    "ZZERO",
    "ZPCOUNT",
    "ZGCOUNT",
    "ZHECKSUM",
    "ZDATASUM",
    "ZTENSION",
    "ZNAME",
    "ZVAL",
    "COMBINED",
    "NCOMBINE",
    "FLATDVER",
}
STRUCTURAL_PREFIXES = (
    "NAXIS",
    "ZNAXIS",
    "ZTILE",
    "ZNAME",
    "ZVAL",
    "TTYPE",
    "TFORM",
    "TUNIT",
    "TNULL",
    "TSCAL",
    "TZERO",
    "TDISP",
    "TDIM",
)
# What a master says it is: no pipeline takes it for a raw flat, and flatd's own frame-type
# rule refuses it (besides COMBINED = T and FLATDVER, which every master also has).
MASTER_IMAGE_TYPE = "MASTERFLAT"
# Keywords that say what kind of frame a file is (IRAF/most capture programs, LCO/Gemini/
# Lowell, INDI/KStars, ESO's HIERARCH ESO DPR TYPE, Subaru): a master sets each one the
# first input had to MASTER_IMAGE_TYPE, and never copies the input's value.
FRAME_TYPE_KEYWORDS = frozenset({"IMAGETYP", "OBSTYPE", "FRAME", "ESO DPR TYPE", "DATA-TYP"})
# Cards that describe one exposure, not the combination of many: a master does not copy
# them from its first input (SEQSTART/SEQEND and the INPUTS table say when and what).
SINGLE_EXPOSURE_KEYWORDS = frozenset(
    {
        # how long
        *("EXPTIME", "EXPOSURE", "EXPOSED", "TELAPSE", "ELAPTIME", "ONTIME", "LIVETIME"),
        "DARKTIME",
        # when
        *("DATE-OBS", "DATE-BEG", "DATE-AVG", "DATE-END", "TIME-OBS", "TIME-BEG", "TIME-END"),
        *("UT", "UTC", "UTC-OBS", "UTCSTART", "UTCEND", "UTSTART", "UTEND", "TSTART", "TSTOP"),
        *("MJD-OBS", "MJD-BEG", "MJD-AVG", "MJD-END", "JD", "JD-OBS", "HJD", "BJD", "LST", "ST"),
        # where the telescope pointed
        *("RA", "DEC", "OBJCTRA", "OBJCTDEC", "RA_OBJ", "DEC_OBJ", "TELRA", "TELDEC", "HA"),
        *("OBJCTHA", "AIRMASS", "SECZ", "ZD", "ALT", "AZ", "ALTITUDE", "AZIMUTH", "ELEVATIO"),
        *("OBJCTALT", "OBJCTAZ", "CENTALT", "CENTAZ", "MOONANGL", "MOONALT", "SUNALT"),
        # the conditions of that moment
        *("CCD-TEMP", "CCDTEMP", "FOCUSPOS", "FOCPOS", "FOCTEMP", "AMBTEMP", "HUMIDITY"),
        "PRESSURE",
        # that file's own name and number
        *("FILENAME", "ORIGFILE", "ORIGNAME", "FRAMENUM", "FRAMENO", "EXPNUM"),
    }
)
# The WCS of one pointing (FITS 4.0 section 8, SIP distortion): a master is in pixels.
WCS_KEYWORD = re.compile(
    r"(WCSAXES|WCSNAME|CTYPE\d+|CRVAL\d+|CRPIX\d+|CDELT\d+|CROTA\d+|CUNIT\d+|CD\d+_\d+"
    r"|PC\d+_\d+|PV\d+_\d+|PS\d+_\d+|LONPOLE|LATPOLE|RADESYS|RADECSYS|EQUINOX|EPOCH"
    r"|[AB]P?_ORDER|[AB]P?_\d+_\d+|[AB]_DMAX)[A-Z]?"
)


@dataclass
class MasterRecord:
    """One written master, as the log event `master_written` and the status file show it."""

    group: dict[str, GroupValue]
    path: Path
    created_at: datetime
    n_frames: int
    n_rejected: int
    median_levels: list[float]
    duration_s: float = 0.0
    qa: dict[str, Any] = field(default_factory=dict)
    promoted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": dict(self.group),
            "path": str(self.path),
            "created_at": utc_iso(self.created_at, timespec="seconds"),
            "n_frames": self.n_frames,
            "n_rejected": self.n_rejected,
            "median_levels": self.median_levels,
            "duration_s": self.duration_s,
            "qa": self.qa,
            "promoted": self.promoted,
        }


# -- names ---------------------------------------------------------------------------------
def safe_value(value: GroupValue) -> str:
    """One header value as a file-name part: letters, digits, `-` and `.` only.

    `'` becomes `p` (g' -> gp, the usual spelling); any other change (a slash, a space,
    a control or non-ASCII character, too long a value) appends a short hash of the
    original, so that two values that differ never share a name."""
    text = ("T" if value else "F") if isinstance(value, bool) else str(value)
    quoted = text.replace("'", "p")
    cleaned = SAFE_CHARACTER.sub("-", quoted)[:MAX_VALUE_LENGTH]
    if not cleaned:
        cleaned = "none"
    if cleaned != quoted or cleaned == "none" or set(cleaned) <= {".", "-"}:
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned.strip('.-') or 'x'}-{digest}"
    return cleaned


def group_slug(group: Iterable[tuple[str, GroupValue]] | dict[str, GroupValue]) -> str:
    """The group's values joined by `_`, each made safe (see `safe_value`)."""
    items = group.items() if isinstance(group, dict) else group
    return "_".join(safe_value(value) for _, value in items)


def master_path(output_dir: Path, group: Any, start: datetime) -> Path:
    """`<output_dir>/flat_<group>_<YYYYMMDDTHHMMSS>.fits`."""
    path = output_dir / f"flat_{group_slug(group)}_{start.astimezone(UTC):%Y%m%dT%H%M%S}.fits"
    _check_inside(path, output_dir)
    return path


def latest_path(output_dir: Path, group: Any) -> Path:
    """`<output_dir>/latest/flat_<group>.fits` (`group`: its keys, or its safe name)."""
    slug = group if isinstance(group, str) else group_slug(group)
    path = output_dir / LATEST / f"flat_{slug}.fits"
    _check_inside(path, output_dir)
    return path


def _check_inside(path: Path, directory: Path) -> None:
    if path.resolve().parent not in (directory.resolve(), (directory / LATEST).resolve()):
        raise ValueError(f"refusing a master path outside {directory}: {path}")


# -- writing -------------------------------------------------------------------------------
def write_master(
    combined: CombineResult,
    frames: list[Frame],
    group: Any,
    start: datetime,
    config: Config,
    *,
    output_dir: Path,
    qa_cards: list[tuple[str, Any, str]] | None = None,
    calibration: Provenance | None = None,
    extension_qa: Sequence[list[tuple[str, Any, str]]] = (),
    duplicates: Iterable[Duplicate] = (),
) -> MasterRecord:
    """Write the master of one sequence atomically and return its record. The images
    are written as they are: big-endian arrays ('>f4') go out without a byte-swap.
    `calibration` says how raw inputs were calibrated (its cards and HISTORY are added,
    the raw readout's section cards removed); `duplicates` are listed in INPUTS as what
    they duplicate. A mosaic's master (`combined.extensions`) is laid out extension by
    extension (`_write_mosaic`), `extension_qa` holding each extension's QA cards."""
    from astropy.io import fits

    path = master_path(output_dir, group, start)
    used = [s for s in combined.stats if s.used]
    created = datetime.now(UTC)
    first = next(f for f in frames if any(s.path == f.path for s in used))
    primary_hdu = 0 if first.extensions else first.hdu
    cards = _verified_cards(first, [primary_hdu, *(e.hdu for e in combined.extensions)])
    qa = qa_cards or []
    verified = cards[primary_hdu]
    header = _header(verified, frames, combined, group, start, created, config, qa, calibration)
    table = _inputs_table(frames, combined, list(duplicates))
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        _write_file(path, combined, cards, header, table, extension_qa, config)
    except fits.VerifyError as exc:  # not expected: every copied card was verified
        log.warning(
            "master_header_refused",
            path=str(path),
            reason=reason_of(exc),
            action="written without the first input's cards",
        )
        header = _header([], frames, combined, group, start, created, config, qa, calibration)
        _write_file(path, combined, {}, header, table, extension_qa, config)
    return MasterRecord(
        group=dict(group),
        path=path,
        created_at=created,
        n_frames=len(used),
        n_rejected=len(combined.stats) - len(used),
        median_levels=[round(s.median, 1) for s in used],
    )


def _write_file(
    path: Path,
    combined: CombineResult,
    input_cards: Mapping[int, list[fits.Card]],
    header: fits.Header,
    table: fits.BinTableHDU,
    extension_qa: Sequence[list[tuple[str, Any, str]]],
    config: Config,
) -> None:
    """The master file, atomically: a single image's layout, or a mosaic's."""
    from astropy.io import fits

    if combined.extensions:
        atomic_write(
            path,
            lambda fh: _write_mosaic(
                fh, combined, input_cards, header, table, extension_qa, config
            ),
        )
        return
    uncertainty_header = fits.Header([UNCERTAINTY_CARD])
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(combined.data, header),
            fits.ImageHDU(combined.mask.view(np.uint8), name="MASK"),
            fits.ImageHDU(combined.uncertainty, uncertainty_header, name="UNCERT"),
            table,
        ]
    )
    atomic_write(path, lambda fh: hdul.writeto(fh))


# -- a mosaic's layout ---------------------------------------------------------------------
def _write_mosaic(
    fh: BinaryIO,
    combined: CombineResult,
    input_cards: Mapping[int, list[fits.Card]],
    header: fits.Header,
    table: fits.BinTableHDU,
    extension_qa: Sequence[list[tuple[str, Any, str]]],
    config: Config,
) -> None:
    """A mosaic's master: the primary HDU (the provenance, no data), then for each input
    extension in input order its image (named as the input's), `<NAME>_UNCERT` and
    `<NAME>_MASK`, then INPUTS. Each plane is read (from memory or the engine's scratch
    file) and appended on its own, so no more than one is in memory."""
    from astropy.io import fits

    header["NEXTEND"] = (3 * len(combined.extensions) + 1, "extensions: 3 per input extension")
    header["CMBNMODE"] = (config.combine.normalise, "mosaic: one scale and median over all")
    fits.HDUList([fits.PrimaryHDU(header=header)]).writeto(fh)
    fh.flush()
    for e, extension in enumerate(combined.extensions):
        cards = extension_qa[e] if e < len(extension_qa) else []
        for hdu in _extension_hdus(extension, combined.plane(e), input_cards, cards, config):
            hdu.verify("exception")
            fits.append(fh.name, hdu.data, hdu.header, verify=False)
    fits.append(fh.name, table.data, table.header, verify=False)


def _extension_hdus(
    extension: ExtensionResult,
    plane: MasterPlane,
    input_cards: Mapping[int, list[fits.Card]],
    qa_cards: list[tuple[str, Any, str]],
    config: Config,
) -> list[fits.ImageHDU]:
    """One extension of a mosaic's master: its image, `_UNCERT` and `_MASK` HDUs. The
    image's header holds the first input's cards of that extension that may be copied
    (DETSEC, DATASEC, CCDSUM, ...), what it was divided by, and its QA."""
    from astropy.io import fits

    copied_cards = input_cards.get(extension.hdu, [])
    header = fits.Header([card for card in copied_cards if copied(card.keyword, config)])
    normalised = "its own median" if config.combine.normalise == "extension" else "the mosaic's"
    header["BUNIT"] = ("", f"dimensionless: response normalised to {normalised} median 1")
    header["INHERIT"] = (True, "the primary header's cards apply here too")
    header["CMBNORM"] = (extension.normalisation, "what the combined scaled frames were divided by")
    for keyword, value, comment in qa_cards:
        header[keyword] = (value, comment)
    uncertainty = fits.Header([UNCERTAINTY_CARD, INHERIT_CARD])
    return [
        fits.ImageHDU(plane.data, header, name=extension.name),
        fits.ImageHDU(plane.uncertainty, uncertainty, name=f"{extension.name}_UNCERT"),
        fits.ImageHDU(
            plane.mask.view(np.uint8), fits.Header([INHERIT_CARD]), name=f"{extension.name}_MASK"
        ),
    ]


def _header(
    verified: list[fits.Card],
    frames: list[Frame],
    combined: CombineResult,
    group: Any,
    start: datetime,
    created: datetime,
    config: Config,
    qa_cards: list[tuple[str, Any, str]],
    calibration: Provenance | None = None,
) -> fits.Header:
    """The master's header: the cards of its first input that may be copied (`verified`,
    its primary or image header's), then what the master is and how it was made (and, for
    raw inputs, how they were calibrated)."""
    from astropy.io import fits

    header = fits.Header([card for card in verified if copied(card.keyword, config)])
    settings = config.combine
    used = [s for s in combined.stats if s.used]
    ends = [f.date for f in frames]
    header["BUNIT"] = ("", "dimensionless: response normalised to median 1")
    _say_master(header, {card.keyword.upper() for card in verified}, config)
    for key, value in dict(group).items():
        _set_checked(header, key, value)
    header.update(
        [
            ("COMBINED", True, "combined by flatd from the INPUTS frames"),
            ("NCOMBINE", len(used), "number of frames combined"),
            ("NREJECT", len(combined.stats) - len(used), "frames rejected before combining"),
            ("FLATDVER", __version__, "flatd version"),
            ("DATE", created.strftime("%Y-%m-%dT%H:%M:%S"), "UTC date this file was written"),
            (
                "SEQSTART",
                start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "UTC date of the sequence's first frame",
            ),
            (
                "SEQEND",
                max(ends).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "UTC date of the sequence's last frame",
            ),
            ("CMBMETH", settings.method, "combination method"),
            ("CMBSCALE", settings.scale, "each frame multiplied by 1/this statistic"),
            ("CMBCLIP", settings.sigma_clip, "sigma clipping of the scaled frames"),
            ("CMBSLOW", settings.sigma_low, "lower clipping threshold (sigma)"),
            ("CMBSHIGH", settings.sigma_high, "upper clipping threshold (sigma)"),
            ("CMBCENT", settings.center, "clipping center"),
            ("CMBDEV", settings.deviation, "clipping deviation"),
            ("CMBMEML", settings.mem_limit_mb, "memory limit (MB)"),
            ("CMBNORM", combined.normalisation, "median of the combined scaled frames"),
            ("CMBENGIN", combined.engine, "engine: compiled kernel or numpy"),
        ]
    )
    for keyword, value, comment in qa_cards:
        header[keyword] = (value, comment)
    if calibration is not None:  # what was done to the raw inputs comes first in HISTORY
        calibration.apply(header)
    header.add_history(
        f"flatd {__version__}: {settings.method} of {len(used)} flats scaled "
        f"by 1/{settings.scale}, clipped {settings.sigma_low:g}/"
        f"{settings.sigma_high:g} around {settings.center} ({settings.deviation})"
    )
    return header


def _verified_cards(first: Frame, hdus: Iterable[int]) -> dict[int, list[fits.Card]]:
    """The first input's cards that can be written (`flatd.outputs.cards`), of each HDU in
    `hdus`, read in one pass; each one dropped is a debug event naming it and why."""
    verified = {}
    for hdu, (kept, dropped) in checked_headers(first.path, hdus).items():
        for card in dropped:
            log.debug(
                "header_card_dropped",
                path=str(first.path),
                keyword=card.keyword,
                card=card.card,
                reason=card.reason,
            )
        verified[hdu] = kept
    return verified


def copied(keyword: str, config: Config) -> bool:
    """Whether a master copies an input card with this (astropy) keyword: not the data's
    layout (`STRUCTURAL_KEYWORDS`), not COMMENT/HISTORY/blank cards, not what one exposure
    alone says (`SINGLE_EXPOSURE_KEYWORDS`, the WCS of its pointing), not what kind of
    frame it is (a master says that itself: `MASTER_IMAGE_TYPE`)."""
    keyword = keyword.upper()
    return not (
        keyword in STRUCTURAL_KEYWORDS
        or keyword.startswith(STRUCTURAL_PREFIXES)
        or keyword in COMMENTARY
        or keyword in SINGLE_EXPOSURE_KEYWORDS
        or WCS_KEYWORD.fullmatch(keyword)
        or keyword in frame_type_keywords(config)
    )


def frame_type_keywords(config: Config) -> frozenset[str]:
    """The keywords that say what kind of frame a file is, as astropy names them (a
    HIERARCH card without its prefix): flatd's defaults and the configured ones."""
    configured = {k.upper().removeprefix("HIERARCH ").strip() for k in config.frames.type_keywords}
    return frozenset({*FRAME_TYPE_KEYWORDS, *configured})


def _say_master(header: fits.Header, present: set[str], config: Config) -> None:
    """IMAGETYP, and every other frame-type keyword the first input had (`present`), say
    MASTERFLAT: no pipeline takes that for a raw flat, and flatd's own rule refuses it."""
    header["IMAGETYP"] = (MASTER_IMAGE_TYPE, "a master flat made by flatd, not a raw flat")
    for keyword in sorted(frame_type_keywords(config) & present - {"IMAGETYP"}):
        name = reader_name(keyword)
        header[name] = MASTER_IMAGE_TYPE


def _set_checked(header: fits.Header, key: str, value: Any) -> None:
    """Set a group key's card, unless astropy cannot write it (then say so, in debug)."""
    from astropy.io import fits

    try:
        card = fits.Card(key, value)
        card.verify("exception")
        fits.Card.fromstring(card.image).verify("exception")
    except Exception as exc:  # a hostile value must cost its card, never the master
        log.debug("group_card_dropped", keyword=key, value=repr(value), reason=one_line(exc))
        return
    header[key] = value


def _inputs_table(
    frames: list[Frame], combined: CombineResult, duplicates: list[Duplicate]
) -> fits.BinTableHDU:
    """One row per input frame, then one per duplicate of an input ("duplicate of ...")."""
    from astropy.io import fits

    stats = {s.path: s for s in combined.stats}
    rows = [(f, stats.get(f.path), "") for f in frames]
    rows += [(d.frame, None, f"{DUPLICATE_OF}{d.of}") for d in duplicates]

    def column(name: str, form: str, values: list[Any]) -> fits.Column:
        return fits.Column(name=name, format=form, array=np.array(values))

    def text(name: str, values: list[str]) -> fits.Column:
        # as bytes: a path outside ASCII (or not even UTF-8) must not cost the master
        encoded = [_to_bytes(v) for v in values]
        return column(name, f"{max([1, *map(len, encoded)])}A", encoded)

    reasons = [why or (s.reason if s else "not combined") for _, s, why in rows]
    dates = [f.date.isoformat(timespec="milliseconds").replace("+00:00", "") for f, _, _ in rows]
    columns = [
        text("FILE", [f.path.name for f, _, _ in rows]),
        text("PATH", [str(f.path) for f, _, _ in rows]),
        column("SIZE", "K", [f.size for f, _, _ in rows]),
        column("MTIME_NS", "K", [f.mtime_ns for f, _, _ in rows]),
        text("DATEOBS", dates),
        column("MEDIAN", "D", [s.median if s else np.nan for _, s, _ in rows]),
        column("MEAN", "D", [s.mean if s else np.nan for _, s, _ in rows]),
        column("SCALE", "D", [s.scale if s else 0.0 for _, s, _ in rows]),
        column("USED", "L", [bool(s and s.used) for _, s, _ in rows]),
        text("REASON", reasons),
        column("CLIPFRAC", "D", [s.clipped_fraction if s else 0.0 for _, s, _ in rows]),
        text("CHECKSUM", [f.content for f, _, _ in rows]),
    ]
    plane_scales = [s.plane_scales if s else () for _, s, _ in rows]
    width = max(map(len, plane_scales), default=0)
    if width:  # a mosaic's extensions each scaled by its own factor
        padded = [[*scales, *[0.0] * (width - len(scales))] for scales in plane_scales]
        columns.append(column("EXTSCALE", f"{width}D", padded))
    # what BinTableHDU.from_columns(columns, name="INPUTS") builds, without its check for
    # an astropy Table, whose import (~0.1 s) is most of the cost of a small table
    table = fits.BinTableHDU()
    table.data = fits.FITS_rec.from_columns(fits.ColDefs(columns))
    table.name = "INPUTS"
    return table


# -- latest/ and reading back --------------------------------------------------------------
def promote_latest(path: Path, group: Any, output_dir: Path) -> Path:
    """Make `latest/flat_<group>.fits` the master at `path` (a hard link, replaced
    atomically; a copy where links are not possible). `group`: its keys or safe name."""
    target = latest_path(output_dir, group)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{TEMP_PREFIX}{target.name}.{os.getpid()}{TEMP_SUFFIX}")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    try:
        os.link(path, temporary)
    except OSError:
        atomic_write(target, lambda fh: _copy_into(path, fh))
        return target
    os.replace(temporary, target)
    fsync_directory(target.parent)
    return target


def _copy_into(path: Path, fh: Any) -> None:
    with path.open("rb") as source:
        shutil.copyfileobj(source, fh)


@dataclass(frozen=True)
class InputRow:
    """One row of a master's INPUTS table: a frame it was made from (or considered)."""

    path: str
    size: int
    mtime_ns: int
    content: str  # the frame's content digest; "" in masters older than CHECKSUM
    used: bool
    reason: str
    median: float

    @property
    def identity(self) -> str:
        """As `Frame.identity`: the content, else path, size and time."""
        return self.content or self.stamp

    @property
    def stamp(self) -> str:
        """The row's path, size and time, as a frame without a digest is known."""
        return f"{self.path}|{self.size}|{self.mtime_ns}"

    @property
    def duplicate_of(self) -> str | None:
        return self.reason.removeprefix(DUPLICATE_OF) if self.is_duplicate else None

    @property
    def is_duplicate(self) -> bool:
        return self.reason.startswith(DUPLICATE_OF)


@dataclass(frozen=True)
class MasterFile:
    """A master on disk as its header and INPUTS table describe it."""

    path: Path
    group: GroupKey | None  # its header's values of the group's keys (None: one missing)
    start: datetime  # SEQSTART (else the name's start)
    written: datetime | None  # DATE
    rows: tuple[InputRow, ...]
    n_frames: int
    n_rejected: int
    flagged: bool  # QAFLAG
    confirmed: bool  # QACONFIR: a change confirmed by the next sequence
    settings: dict[str, Any]  # the settings cards it has (`flatd.outputs.settings`)
    qa: dict[str, Any]  # the QA record read back from its QA cards

    @property
    def identities(self) -> frozenset[str]:
        """The frames it claims (used, rejected or duplicates), by content when known."""
        return frozenset(row.identity for row in self.rows)

    def claims(self, frame: Frame) -> bool:
        """Whether `frame` is one of the frames this master was made from or considered
        (by its content; a master from before content digests, by path, size and time)."""
        return bool(self._claimed & {frame.identity, f"{frame.path}|{frame.size}|{frame.mtime_ns}"})

    @functools.cached_property
    def _claimed(self) -> frozenset[str]:
        # a master from before CHECKSUM claims frames by path, size and time
        return frozenset(key for row in self.rows for key in (row.identity, row.stamp))

    @property
    def used_medians(self) -> list[float]:
        return [round(r.median, 1) for r in self.rows if r.used]


def read_master_inputs(path: Path) -> list[dict[str, Any]]:
    """The rows of a master's INPUTS table as dicts (column name -> value)."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        table = hdul["INPUTS"].data
        names = table.columns.names
        return [{name: _plain(row[name]) for name in names} for row in table]


def read_master_file(path: Path, keys: Iterable[str]) -> MasterFile:
    """A master's header facts and INPUTS rows, from one open; `keys` are its group's keys
    (their values make `group`). Raises OSError, KeyError or ValueError for a file that is
    not a readable master."""
    from astropy.io import fits

    keys = tuple(keys)
    with fits.open(path) as hdul:
        header = hdul[0].header
        table = hdul["INPUTS"].data
        names = set(table.columns.names)
        rows = tuple(_input_row(row, names) for row in table)
        values = [(key, header[key]) for key in keys if key in header]
        group = (
            tuple((k, v.strip() if isinstance(v, str) else v) for k, v in values)
            if len(values) == len(keys)
            else None
        )
        return MasterFile(
            path=path,
            group=group,
            start=_header_date(header.get("SEQSTART")) or _name_start(path),
            written=_header_date(header.get("DATE")),
            rows=rows,
            n_frames=int(header.get("NCOMBINE", sum(r.used for r in rows))),
            n_rejected=int(header.get("NREJECT", 0)),
            flagged=bool(header.get("QAFLAG", False)),
            confirmed=bool(header.get("QACONFIR", False)),
            settings={s.card: _plain(header[s.card]) for s in SETTINGS if s.card in header},
            qa=_qa_record(header, hdul),
        )


QA_CARDS = {  # master header card -> the QA record's key (`qa.MasterQA.to_dict`)
    "QAMASKFR": "masked_fraction",
    "QAMASK": "masked_pixels",
    "QANOISE": "noise",
    "QAEXPNS": "expected_noise",
    "QACHGRMS": "change_rms",
    "QACHGFR": "changed_fraction",
    "QAFLAG": "flagged",
    "QAPREV": "previous",
    "QACONFIR": "confirmed",
    "QAREF": "reference",
}


def _qa_record(header: fits.Header, hdul: fits.HDUList | None = None) -> dict[str, Any]:
    """The QA record of a master's primary header; a mosaic's (`hdul` given, a primary
    HDU without data) with each extension's own, as `mosaic_qa.MosaicQA.to_dict` has it.
    Its headers were read already, to reach INPUTS."""
    record = {key: _plain(header[card]) for card, key in QA_CARDS.items() if card in header}
    if hdul is None or header.get("NAXIS", 0) != 0:
        return record
    extensions = [
        {"name": hdu.name, **_qa_record(hdu.header)}
        for hdu in hdul[1:]
        if hdu.is_image and "QAMASK" in hdu.header
    ]
    if extensions:
        record["extensions"] = extensions
    return record


def _input_row(row: Any, names: set[str]) -> InputRow:
    return InputRow(
        path=_plain(row["PATH"]),
        size=int(row["SIZE"]),
        mtime_ns=int(row["MTIME_NS"]),
        content=_plain(row["CHECKSUM"]) if "CHECKSUM" in names else "",
        used=bool(row["USED"]),
        reason=_plain(row["REASON"]),
        median=float(row["MEDIAN"]),
    )


def _header_date(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def name_start(path: Path) -> datetime | None:
    """The sequence start in a master's file name (None: not a master's name)."""
    match = MASTER_NAME.fullmatch(path.name)
    if match is None:
        return None
    return datetime.strptime(match["start"], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


def name_group(path: Path) -> str | None:
    """The group's safe name in a master's file name (None: not a master's name)."""
    match = MASTER_NAME.fullmatch(path.name)
    return match["group"] if match else None


def _name_start(path: Path) -> datetime:
    start = name_start(path)
    if start is None:
        raise ValueError(f"not a master's name: {path.name}")
    return start


def _to_bytes(text: str) -> bytes:
    """UTF-8, with a file name's undecodable bytes (Python's surrogate escapes) as they
    were on disk; `_plain` turns them back into the same str."""
    return text.encode("utf-8", "surrogateescape")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, np.generic):
        return value.item()
    return value
