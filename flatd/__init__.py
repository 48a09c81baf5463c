"""flatd: watch calibrated frames land and keep a fresh master flat for every filter."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flatd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
