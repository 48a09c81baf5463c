"""The kernel fails safe: a library of another ABI (built here, deliberately stale) is
refused and the numpy engine combines, with one warning; the engine in use and why is
logged at start, in the result and in the master's header."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from astropy.io import fits
from structlog.testing import capture_logs

from flatd.config import CombineConfig, parse_config
from flatd.engine import combine, kernel, log_choice
from flatd.simulation.flats import simulate_sequence, write_sequence
from tests.helpers import frames_of

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(name) for name in ("cc", "gcc", "clang")), reason="no C compiler"
)


def test_kernel_is_built_where_a_compiler_is() -> None:
    if not any(shutil.which(name) for name in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler here: flatd runs on numpy alone, as designed")
    assert kernel.built(), kernel.build_note()


def stale_library(directory: Path, version: int) -> Path:
    """A library that says it speaks ABI `version` (and has the old 26-argument entry)."""
    source = directory / "stale.c"
    source.write_text(
        "#include <stdint.h>\n"
        f"int64_t flatd_abi_version(void) {{ return {version}; }}\n"
        "int flatd_combine_band(void *a, int64_t b, void *c) { return 0; }\n"
    )
    library = directory / "libstale.so"
    compiler = next(n for n in ("cc", "gcc", "clang") if shutil.which(n))
    subprocess.run([compiler, "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    return library


@needs_compiler
def test_a_library_of_another_abi_version_is_refused(tmp_path: Path) -> None:
    library, reason = kernel.load_library(str(stale_library(tmp_path, kernel.ABI_VERSION - 1)))
    assert library is None
    assert reason == (
        f"ABI mismatch: library version {kernel.ABI_VERSION - 1}, "
        f"flatd expects {kernel.ABI_VERSION}"
    )


@needs_compiler
def test_a_library_without_a_version_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "old.c"
    source.write_text("int flatd_combine_band(void) { return 0; }\n")
    path = tmp_path / "libold.so"
    compiler = next(n for n in ("cc", "gcc", "clang") if shutil.which(n))
    subprocess.run([compiler, "-shared", "-fPIC", str(source), "-o", str(path)], check=True)
    library, reason = kernel.load_library(str(path))
    assert library is None and reason.startswith("ABI mismatch") and "no ABI version" in reason


@pytest.fixture
def fresh_load():
    kernel._loaded.cache_clear()
    yield
    kernel._loaded.cache_clear()


@pytest.mark.skipif(not kernel.built(), reason="compiled kernel not built")
def test_abi_mismatch_warns_and_the_numpy_engine_combines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_load: None
) -> None:
    monkeypatch.setattr(kernel, "ABI_VERSION", kernel.ABI_VERSION + 1)
    frames = frames_of(write_sequence(simulate_sequence((40, 70), 5, seed=1), tmp_path))
    with capture_logs() as events:
        chosen = log_choice()
        result = combine(frames, CombineConfig())
    assert chosen.engine == "numpy" and chosen.reason.startswith("ABI mismatch")
    refused = [e for e in events if e["event"] == "kernel_refused"]
    assert len(refused) == 1 and refused[0]["log_level"] == "warning"
    selected = [e for e in events if e["event"] == "engine_selected"]
    assert selected == [
        {
            "event": "engine_selected",
            "engine": "numpy",
            "reason": chosen.reason,
            "log_level": "warning",
        }
    ]
    assert (result.engine, result.engine_reason) == ("numpy", chosen.reason)


def test_the_engine_and_why_reach_the_result_and_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flatd.pipeline import make_master
    from tests.test_qa import sequence_of

    paths = write_sequence(simulate_sequence((40, 70), 5, seed=2), tmp_path / "in")
    config = parse_config({"output": {"directory": str(tmp_path / "out"), "preview": False}})
    monkeypatch.setenv("FLATD_ENGINE", "numpy")
    with capture_logs() as events:
        assert log_choice().reason == "FLATD_ENGINE=numpy"
    assert events[0]["engine"] == "numpy" and events[0]["log_level"] == "info"
    result = make_master(sequence_of(paths, config), config)
    assert fits.getheader(result.record.path)["CMBENGIN"] == "numpy"
    monkeypatch.delenv("FLATD_ENGINE")
    result = make_master(sequence_of(paths, config), config)
    expected = "compiled" if kernel.built() else "numpy"
    assert fits.getheader(result.record.path)["CMBENGIN"] == expected
    median = parse_config({"combine": {"method": "median"}}).combine
    assert combine(frames_of(paths), median).engine_reason == (
        "combine.method = median" if kernel.built() else kernel.choice().reason
    )


def test_the_extension_module_is_importable_and_says_its_abi() -> None:
    if not kernel.built():
        pytest.skip("compiled kernel not built")
    import flatd.engine._kernel as module

    assert module.ABI_VERSION == kernel.ABI_VERSION
