"""Raw frame in, calibrated float32 frame out: the astropy guide's "Calibrating the flats"
with ccdproc, one frame at a time.

The stages, in order (each skipped when the recipe leaves it out):

    1. ccdproc.subtract_overscan  the overscan section (BIASSEC) combined across its strip:
                                  one value per row for a strip of columns
                                  (overscan_axis=1), by median (the guide's way), mean, or
                                  a model fitted along the strip
    2. ccdproc.trim_image         to TRIMSEC / DATASEC
    3. ccdproc.subtract_bias      the sequence's master bias
    4. ccdproc.subtract_dark      the master dark scaled by exposure time

The result is written as a plain float32 FITS file into the workspace, with the raw
header (less the cards that no longer describe it) and the provenance cards; the engine
reads it like any calibrated frame, while the raw path stays the frame's identity.

Memory: one raw frame at a time. Its pixels are read once as float32 (a 4096x4096 frame:
64 MB); with ccdproc's copies (overscan subtraction copies the frame and makes the
difference) about three such arrays are held at the peak, five with a scaled dark (ccdproc
scales a copy of the dark in float64), all released before the next frame. The master bias
and dark are read once per sequence and kept until the Calibrator is closed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flatd.calibrate.detect import header_values
from flatd.calibrate.errors import CalibrationError
from flatd.calibrate.geometry import Geometry, frame_geometry
from flatd.calibrate.library import MasterFile, exposure_of, misfit
from flatd.calibrate.provenance import provenance
from flatd.calibrate.recipe import FITTED_MODELS, Recipe
from flatd.calibrate.sections import Section
from flatd.calibrate.workspace import Workspace
from flatd.frames import binning_of

# cards of the raw file's structure, not of the frame: never copied to the calibrated file
STRUCTURAL = frozenset(
    {"SIMPLE", "XTENSION", "BITPIX", "EXTEND", "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK"}
    | {"CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX", "ZCMPTYPE", "ZQUANTIZ", "ZDITHER0"}
    | {"ZSIMPLE", "ZEXTEND", "ZBLOCKED", "ZTENSION", "ZPCOUNT", "ZGCOUNT", "ZHECKSUM"}
    | {"ZDATASUM", "TFIELDS"}
)
STRUCTURAL_PREFIXES = ("NAXIS", "ZNAXIS", "ZTILE", "ZNAME", "ZVAL", "TTYPE", "TFORM")


@dataclass(frozen=True)
class UsedMaster:
    """A master bias or dark as it was used: the file and the checksum of its bytes."""

    path: Path
    sha256: str
    exptime: float | None


@dataclass(frozen=True)
class CalibratedFrame:
    """What calibrating one raw frame produced and did."""

    raw_path: Path  # the frame's identity (INPUTS, status, log)
    path: Path  # the calibrated float32 copy in the workspace
    shape: tuple[int, int]  # (ny, nx) after trimming
    overscan: Section | None
    overscan_axis: int | None  # numpy axis the overscan was combined along (1: per row)
    overscan_level: float | None  # [ADU] median of the overscan section
    trim: Section | None
    bias: UsedMaster | None
    dark: UsedMaster | None
    dark_scale: float | None  # frame exposure / dark exposure


@dataclass(frozen=True)
class _Loaded:
    ccd: Any  # CCDData
    used: UsedMaster


class Calibrator:
    """Calibrates the raw frames of one sequence with one recipe; holds the recipe's master
    bias and dark (read on first use) until closed."""

    def __init__(self, recipe: Recipe) -> None:
        import ccdproc

        self.recipe = recipe
        self.tool = f"ccdproc {ccdproc.__version__}"
        self._masters: dict[str, _Loaded] = {}

    def calibrate(self, raw_path: Path, workspace: Workspace) -> CalibratedFrame:
        """Calibrate one raw frame into `workspace`; CalibrationError names why not."""
        from astropy.nddata import CCDData

        data, header = read_raw(raw_path)
        values = header_values(header)
        geometry = self._geometry(values, data.shape)
        ccd = CCDData(data, unit="adu", meta=_copyable(header))
        del data
        ccd, level = self._subtract_overscan(ccd, geometry)
        ccd = self._trim(ccd, geometry)
        binning = binning_of(values, self.recipe.binning_keywords)
        ccd, bias = self._subtract_bias(ccd, binning)
        ccd, dark, scale = self._subtract_dark(ccd, values, binning)
        record = CalibratedFrame(
            raw_path=raw_path,
            path=workspace.path_for(raw_path),
            shape=ccd.shape,
            overscan=geometry.overscan,
            overscan_axis=geometry.axis,
            overscan_level=level,
            trim=geometry.trim,
            bias=bias,
            dark=dark,
            dark_scale=scale,
        )
        _write(ccd, record, provenance(self.recipe, [record], self.tool), workspace)
        return record

    def _geometry(self, values: dict[str, Any], shape: tuple[int, ...]) -> Geometry:
        recipe = self.recipe
        return frame_geometry(
            values,
            (shape[0], shape[1]),
            recipe.overscan_keywords if recipe.overscan else None,
            recipe.trim_keywords if recipe.trim else None,
        )

    def _subtract_overscan(self, ccd: Any, geometry: Geometry) -> tuple[Any, float | None]:
        """The guide's `subtract_overscan(ccd, overscan=ccd[...], median=True)`, after
        cutting the frame to the overscan's reach when it does not span it all."""
        if geometry.overscan is None:
            return ccd, None
        import ccdproc

        if geometry.needs_cut:
            ccd = ccd[geometry.cut]
        overscan = ccd[geometry.overscan_slices]
        level = float(np.median(overscan.data))
        model = self.recipe.overscan_model
        ccd = _step(
            "subtract_overscan",
            ccdproc.subtract_overscan,
            ccd,
            overscan=overscan,
            overscan_axis=geometry.axis,
            median=model != "mean",
            model=_fitted_model(model, self.recipe.overscan_degree),
        )
        return ccd, level

    def _trim(self, ccd: Any, geometry: Geometry) -> Any:
        """The guide's `trim_image(ccd[...])`."""
        if geometry.trim is None:
            return ccd
        import ccdproc

        return _step("trim_image", ccdproc.trim_image, ccd[geometry.trim_slices])

    def _subtract_bias(
        self, ccd: Any, binning: tuple[int, int] | None
    ) -> tuple[Any, UsedMaster | None]:
        bias = self._master("bias", ccd.shape, binning)
        if bias is None:
            return ccd, None
        import ccdproc

        return _step("subtract_bias", ccdproc.subtract_bias, ccd, bias.ccd), bias.used

    def _subtract_dark(
        self, ccd: Any, values: dict[str, Any], binning: tuple[int, int] | None
    ) -> tuple[Any, UsedMaster | None, float | None]:
        dark = self._master("dark", ccd.shape, binning)
        if dark is None:
            return ccd, None, None
        import ccdproc
        from astropy import units as u

        exposure = exposure_of(values)
        if exposure is None:
            raise CalibrationError("no EXPTIME to scale the master dark by")
        assert dark.used.exptime is not None  # library checks darks have one
        ccd = _step(
            "subtract_dark",
            ccdproc.subtract_dark,
            ccd,
            dark.ccd,
            data_exposure=exposure * u.s,
            dark_exposure=dark.used.exptime * u.s,
            scale=True,
        )
        return ccd, dark.used, exposure / dark.used.exptime

    def _master(
        self, kind: str, shape: tuple[int, int], binning: tuple[int, int] | None
    ) -> _Loaded | None:
        master = self.recipe.bias if kind == "bias" else self.recipe.dark
        if master is None:
            return None
        problem = misfit(master, shape, binning)
        if problem:
            raise CalibrationError(f"master {kind} {problem}")
        if kind not in self._masters:
            self._masters[kind] = _load(master)
        return self._masters[kind]

    def close(self) -> None:
        """Release the masters' pixels."""
        self._masters.clear()

    def __enter__(self) -> Calibrator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_raw(path: Path) -> tuple[np.ndarray, Any]:
    """A raw frame's first 2-D image as float32 (BZERO/BSCALE applied) and its header."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            hdu = next((h for h in hdul if h.header.get("NAXIS") == 2 and h.data is not None), None)
            if hdu is None:
                raise CalibrationError(f"raw frame {path.name} holds no 2-D image")
            return np.array(hdu.data, dtype=np.float32), hdu.header.copy()
    except (OSError, ValueError, TypeError, EOFError) as exc:
        raise CalibrationError(f"cannot read raw frame {path.name}: {exc}") from None


def _load(master: MasterFile) -> _Loaded:
    """Read a master's bytes once: their SHA-256 is the checksum of exactly what is used."""
    from astropy.io import fits
    from astropy.nddata import CCDData

    try:
        content = master.path.read_bytes()
        with fits.open(io.BytesIO(content)) as hdul:
            hdu = hdul[master.hdu]
            data, header = np.array(hdu.data, dtype=np.float32), hdu.header.copy()
    except (OSError, ValueError, TypeError, IndexError, EOFError) as exc:
        raise CalibrationError(
            f"master {master.kind} {master.path.name} is unreadable: {exc}"
        ) from None
    if data.shape != master.shape:
        raise CalibrationError(f"master {master.kind} {master.path.name} changed since chosen")
    used = UsedMaster(master.path, hashlib.sha256(content).hexdigest(), master.exptime)
    return _Loaded(CCDData(data, unit="adu", meta=header), used)


def _fitted_model(name: str, degree: int) -> Any:
    if name not in FITTED_MODELS:
        return None
    from astropy.modeling import models

    kinds = {
        "chebyshev": models.Chebyshev1D,
        "legendre": models.Legendre1D,
        "polynomial": models.Polynomial1D,
    }
    return kinds[name](degree)


def _step(name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one ccdproc step; its failure becomes a CalibrationError naming the step."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:  # ccdproc raises ValueError, TypeError, UnitsError, ...
        raise CalibrationError(f"ccdproc.{name} failed: {exc}") from exc


def _copyable(header: Any) -> Any:
    """The raw header without its structural cards and without cards astropy would refuse
    to write (a camera's unquoted strings, say)."""
    from astropy.io import fits

    clean = fits.Header()
    for card in header.cards:
        keyword = card.keyword
        if keyword in STRUCTURAL or keyword.startswith(STRUCTURAL_PREFIXES):
            continue
        with contextlib.suppress(fits.VerifyError, ValueError):
            card.verify("silentfix+exception")
            clean.append(card)
    return clean


def _write(ccd: Any, record: CalibratedFrame, cards: Any, workspace: Workspace) -> None:
    from astropy.io import fits

    header = ccd.header
    cards.apply(header)
    hdu = fits.PrimaryHDU(np.asarray(ccd.data, dtype=np.float32), header)
    workspace.write(record.path, lambda fh: hdu.writeto(fh))
