"""Why a raw frame (or a whole sequence) cannot be calibrated: one exception type, one line."""

from __future__ import annotations


class CalibrationError(Exception):
    """A raw frame that cannot be calibrated as configured: a mismatched or unreadable master
    bias or dark, a section outside the image, an unreadable frame. `reason` is one line,
    fit for a rejection reason in the INPUTS table, the status file and the log; the frame
    (or sequence) is rejected, never combined uncalibrated."""

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(reason.split())
        super().__init__(self.reason)


class CalibrationUnavailable(CalibrationError):
    """No master bias or dark fits the sequence *yet* (none taken before it with its shape
    and binning, or the configured file or directory does not exist): the daemon can wait
    for one to arrive instead of failing the sequence. `kind` is "bias" or "dark"."""

    def __init__(self, reason: str, kind: str = "bias") -> None:
        super().__init__(reason)
        self.kind = kind

    def waiting(self) -> str:
        """The reason as a sequence's: `waiting for a master bias: <reason>`."""
        return f"waiting for a master {self.kind}: {self.reason}"
