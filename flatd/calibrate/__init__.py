"""Raw frames: detect them, and calibrate them with ccdproc before they are combined.

The astropy guide's "Calibrating the flats", which comes before "Combining flats", done
frame by frame at run time:

    signs = detect_raw(cards)                         # is this frame raw? (pure, cheap)
    recipe = plan(config.calibrate, first_cards, start, libraries)   # steps + masters
    with Workspace(output_dir) as work, Calibrator(recipe) as calibrator:
        frames = [calibrator.calibrate(path, work) for path in raw_paths]
        ...combine the calibrated copies (frames[i].path); raw paths stay the identity...
        cards = provenance(recipe, frames, calibrator.tool)  # for the master's header

Every failure is a `CalibrationError` with a one-line `reason`; `CalibrationUnavailable`
(a subclass) means no master bias or dark fits the sequence yet, which may change.
"""

from flatd.calibrate.detect import RawSigns, detect_raw, detection_keywords, header_values
from flatd.calibrate.errors import CalibrationError, CalibrationUnavailable
from flatd.calibrate.frame import CalibratedFrame, Calibrator, UsedMaster, read_raw
from flatd.calibrate.library import MasterFile, MasterLibrary, read_master
from flatd.calibrate.provenance import Provenance, provenance
from flatd.calibrate.recipe import MasterLibraries, Recipe, plan, settings_problems
from flatd.calibrate.sections import Section, parse_section
from flatd.calibrate.workspace import WORK_DIRECTORY, Workspace, remove_stale_workspaces

__all__ = [
    "WORK_DIRECTORY",
    "CalibratedFrame",
    "CalibrationError",
    "CalibrationUnavailable",
    "Calibrator",
    "MasterFile",
    "MasterLibraries",
    "MasterLibrary",
    "Provenance",
    "RawSigns",
    "Recipe",
    "Section",
    "UsedMaster",
    "Workspace",
    "detect_raw",
    "detection_keywords",
    "header_values",
    "parse_section",
    "plan",
    "provenance",
    "read_master",
    "read_raw",
    "remove_stale_workspaces",
    "settings_problems",
]
