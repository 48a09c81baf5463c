"""flatd: watch calibrated frames land and keep a fresh master flat for every filter."""

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it from here
