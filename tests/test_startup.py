"""What a one-shot command imports before it starts working: astropy (~0.3 s) only when a
file needs it, and once it is imported late, its logging still goes through flatd's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers import write_frame

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (this one has astropy imported already)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_scan_and_check_config_run_without_astropy(tmp_path: Path) -> None:
    for i in range(3):
        write_frame(
            tmp_path / "night" / f"flat_{i}.fits",
            np.full((16, 20), 20000.0 + i, np.float32),
            **{"DATE-OBS": f"2026-11-23T17:3{i}:00"},
        )
    config = tmp_path / "config.toml"
    config.write_text('[log]\nformat = "json"\nlevel = "warning"\n')
    done = _python(
        "import sys\n"
        "from flatd.cli import main\n"
        "assert main(['check-config', '--config', sys.argv[1]]) == 0\n"
        "assert main(['scan', '--json', '--config', sys.argv[1], sys.argv[2]]) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'astropy'\n"
        "             or m == 'flatd.simulation.flats'))\n",
        str(config),
        str(tmp_path / "night"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert '"flats": 3' in done.stdout


def test_combine_modules_import_without_astropy() -> None:
    done = _python(
        "import sys\n"
        "import flatd.cli, flatd.oneshot, flatd.pipeline, flatd.daemon.service\n"
        "flatd.cli._parser(with_simulate=False)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'astropy'))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_simulate_keeps_its_options() -> None:
    done = _python("from flatd.cli import main\nmain(['simulate', '--help'])\n")
    assert done.returncode == 0, done.stderr
    assert "--filters" in done.stdout and "OUTDIR" in done.stdout


def test_astropy_imported_after_logging_is_set_up_logs_through_flatd() -> None:
    done = _python(
        "import sys, warnings\n"
        "from flatd.logs import configure_logging, _flatd_showwarning\n"
        "configure_logging('json', 'info', stream=sys.stdout)\n"
        "assert 'astropy' not in sys.modules\n"
        "from astropy import log\n"
        "from astropy.io.fits.verify import VerifyWarning\n"
        "assert log.handlers == [] and warnings.showwarning is _flatd_showwarning\n"
        "for i in range(3):\n"
        "    warnings.warn(f'Card {i} of /data/f{i}.fits fixed', VerifyWarning)\n"
        "log.warning('from astropy')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["event"], e.get("logger")) for e in events] == [
        ("astropy_warning", None),
        ("from astropy", "astropy"),
    ]
