"""The observer's page `index.html`: written beside the status file, every image it shows
exists, header values cannot inject markup, and a real headless browser renders it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flatd.config import load_config
from flatd.daemon.service import Daemon
from flatd.pictures.preview import write_preview, write_ratio_picture
from flatd.status import page, parse_iso
from flatd.status.page import render_page, write_page

HOSTILE = '<script>alert("x")</script>"><img src=x onerror=alert(1)>&amp;'
NOW = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _group(filter_name: str, masters: Path, state: str = "done", **extra: Any) -> dict:
    keys = {"FILTER": filter_name, "INSTRUME": "SIMCAM", "XBINNING": 1, "YBINNING": 1}
    latest = str(masters / f"flat_{filter_name}_SIMCAM_1_1_20261123T173000.fits")
    return {
        "group": keys,
        "name": f"{filter_name}_SIMCAM_1_1",
        "frames": 7,
        "state": state,
        "stable_at": _iso(NOW + timedelta(seconds=30)),
        "last_frame_at": _iso(NOW),
        "latest_master": latest if state == "done" else None,
        "reason": "",
        "rejected": [],
        **extra,
    }


def _master(group: dict, qa: dict | None = None) -> dict:
    return {
        "group": group["group"],
        "path": group["latest_master"],
        "created_at": _iso(NOW - timedelta(minutes=90)),
        "n_frames": 6,
        "n_rejected": 1,
        "median_levels": [40000.0, 30000.0],
        "duration_s": 0.4,
        "qa": qa or {},
        "promoted": True,
    }


def _document(tmp_path: Path, *, hostile: bool = False) -> dict:
    masters = tmp_path / "masters"
    groups = [_group("g", masters), _group("r", masters), _group("i", masters, "waiting")]
    groups[0]["rejected"] = [{"path": "/data/flat_g_003.fits", "reason": "too faint: 800"}]
    if hostile:
        groups.append(
            _group(
                HOSTILE, masters, reason=HOSTILE, rejected=[{"path": HOSTILE, "reason": HOSTILE}]
            )
        )
    masters_list = [_master(groups[0], {"flagged": True, "change": 0.031}), _master(groups[1])]
    if hostile:
        masters_list.append(_master(groups[3], {HOSTILE: HOSTILE}))
    return {
        "schema": 1,
        "daemon": {
            "pid": 1234,
            "version": "0.1.0",
            "state": "running",
            "started_at": _iso(NOW - timedelta(hours=12)),
            "updated_at": _iso(NOW),
        },
        "watch": {"directories": [str(tmp_path / "incoming")], "observer": "inotify"},
        "index": {"frames": 22, "flats": 21, "skipped": 0, "rejected": 1},
        "groups": groups,
        "masters": masters_list,
        "errors": [
            {
                "path": str(tmp_path / "incoming" / "broken_000.fits"),
                "reason": "truncated: 6976 bytes expected, 5883 on disk"
                + (HOSTILE if hostile else ""),
                "at": _iso(NOW),
                "count": 2,
            }
        ],
    }


def _previews(document: dict, *, skip: tuple[str, ...] = ()) -> list[Path]:
    y, x = np.mgrid[:64, :96]
    data = (1 - 0.2 * ((x - 48) ** 2 + (y - 32) ** 2) / 48**2).astype(np.float32)
    written = []
    for master in document["masters"]:
        if master["group"]["FILTER"] in skip:
            continue
        levels = [("a.fits", 40000.0, 39900.0, True, ""), ("b.fits", 800.0, 790.0, False, "faint")]
        written.append(write_preview(Path(master["path"]), data, None, "t", levels))
    return written


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def only_the_stale_check(text: str) -> bool:
    """The page's one script is its own stale check, allowed by its hash alone."""
    scripts = text.lower().count("<script")
    csp = [
        a.get("content") or ""
        for t, a in _tags(text)
        if a.get("http-equiv") == ("Content-Security-Policy")
    ]
    return (
        scripts == 1
        and f"<script>{page._STALE_SCRIPT}</script>" in text
        and any("script-src 'sha256-" in c for c in csp)
    )


def _write(tmp_path: Path, document: dict) -> Path:
    return write_page(document, tmp_path / "status.json", tmp_path / "masters")


def test_page_written_beside_the_status_file(tmp_path: Path) -> None:
    document = _document(tmp_path)
    _previews(document)
    path = _write(tmp_path, document)
    assert path == tmp_path / "index.html"
    text = path.read_text("utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert '<meta http-equiv="refresh" content="60">' in text
    for expected in (
        "g_SIMCAM_1_1",
        "r_SIMCAM_1_1",
        "i_SIMCAM_1_1",
        "running",
        "waiting",
        "6 / 1",
        "QA flagged",
        "flat_g_003.fits: too faint: 800",
        "broken_000.fits",
        "(×2)",
        "frames used / rejected",
    ):
        assert expected in text, expected
    assert only_the_stale_check(text)
    assert not list(tmp_path.glob(".flatd-tmp-*"))


def test_master_age_is_shown(tmp_path: Path) -> None:
    text = render_page(_document(tmp_path), tmp_path, tmp_path / "masters", now=NOW)
    assert "90 min ago (2026-11-24 05:30:00 UTC)" in text
    assert "in 30 s" in text  # the waiting group: when it will combine


def test_every_image_referenced_exists_and_links_are_relative(tmp_path: Path) -> None:
    document = _document(tmp_path)
    written = _previews(document, skip=("r",))  # r has no preview: no <img> for it
    path = _write(tmp_path, document)
    images = [attrs["src"] for tag, attrs in _tags(path.read_text("utf-8")) if tag == "img"]
    assert len(images) == len(written) == 1
    for src in images:
        assert src and not src.startswith("/") and "://" not in src
        assert (path.parent / src).resolve().is_file()
    assert sorted((path.parent / s).resolve() for s in images) == sorted(
        p.resolve() for p in written
    )


def test_page_in_another_directory_links_up(tmp_path: Path) -> None:
    document = _document(tmp_path)
    _previews(document)
    path = write_page(document, tmp_path / "state" / "status.json", tmp_path / "masters")
    images = [attrs["src"] for tag, attrs in _tags(path.read_text("utf-8")) if tag == "img"]
    assert images and all(src.startswith("../masters/") for src in images)
    assert all((path.parent / src).is_file() for src in images)


def test_hostile_header_values_are_escaped(tmp_path: Path) -> None:
    document = _document(tmp_path, hostile=True)
    text = _write(tmp_path, document).read_text("utf-8")
    assert only_the_stale_check(text)
    assert "onerror" not in {k for _, attrs in _tags(text) for k in attrs}
    assert [tag for tag, _ in _tags(text)].count("img") == 0  # no previews were drawn
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "&amp;amp;" in text  # an entity in a header stays text


def test_a_file_name_that_is_not_utf8_is_shown_escaped(tmp_path: Path) -> None:
    document = _document(tmp_path)
    odd = os.fsdecode(b"/data/incoming/flat_\xff.fits")
    document["skipped"] = [{"path": odd, "reason": "truncated"}]
    document["errors"] = [{"group": "", "path": odd, "message": f"{odd}: unreadable"}]
    text = _write(tmp_path, document).read_text("utf-8")
    assert "flat_\\udcff.fits" in text


def test_malformed_documents_still_render(tmp_path: Path) -> None:
    for document in (
        {},
        {"daemon": None, "groups": "x", "masters": [1], "errors": [None]},
        {"groups": [{"group": None, "latest_master": 5}], "masters": [{}]},
    ):
        text = render_page(document, tmp_path, tmp_path)
        assert "</html>" in text


@pytest.mark.slow
def test_daemon_writes_the_page_with_every_status_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.toml").write_text(
        '[watch]\ndirectories = ["incoming"]\n[status]\nfile = "state/status.json"\n'
    )
    daemon = Daemon(load_config(tmp_path / "config.toml"))
    document = _document(tmp_path)
    daemon._announce(document)
    assert "g_SIMCAM_1_1" in (tmp_path / "state" / "index.html").read_text("utf-8")

    def broken(*args: object) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(page, "write_page", broken)
    daemon._announce(document)  # logged, never raised
    daemon._announce(document)


# -- a real browser ----------------------------------------------------------------------------
def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_browser(browser: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={cwd / 'chromium-profile'}",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_renders_in_a_headless_browser(tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI=true but no chromium: `make test` installs it (apt-get install chromium)"
            )
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    mpimg = pytest.importorskip("matplotlib.image")
    document = _document(tmp_path, hostile=True)
    _previews(document)
    path = _write(tmp_path, document)
    url = path.resolve().as_uri()

    dom = _run_browser(browser, "--dump-dom", url, cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for name in ("g_SIMCAM_1_1", "r_SIMCAM_1_1", "i_SIMCAM_1_1"):
        assert name in dom.stdout
    assert '<script>alert("x")</script>' not in dom.stdout  # shown as text, never an element
    assert "alert(&quot;x&quot;)" in dom.stdout or 'alert("x")' in dom.stdout

    shot = tmp_path / "shot.png"
    run = _run_browser(
        browser,
        f"--screenshot={shot}",
        "--window-size=1200,900",
        "--hide-scrollbars",
        url,
        cwd=tmp_path,
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1200)
    not_white = (pixels < 0.9).any(axis=2)
    assert not_white.mean() > 0.05, "the screenshot is (nearly) blank"
    # the header bar is dark, and below it the page is mostly light with the previews in it
    assert pixels[:40].mean() < 0.3
    json.dumps(document)  # the fixture document is what a status file holds


def test_a_failed_group_shows_its_reason_on_one_line(tmp_path: Path) -> None:
    document = _document(tmp_path)
    reason = "VerifyError: \nVerification reported errors:\nHDU 0:\n    Card 6:\n  Card 'RA' bad\n"
    document["groups"][2] = _group("i", tmp_path / "masters", "failed", reason=reason)
    text = render_page(document, tmp_path, tmp_path / "masters", now=NOW)
    assert '<span class="badge bad">failed</span>' in text
    assert "<dd>VerifyError: Card &#x27;RA&#x27; bad</dd>" in text


# -- the stale marker (issue 14, item 5) -------------------------------------------------------
def _stale_banner(html_text: str) -> dict[str, str | None] | None:
    return next((a for t, a in _tags(html_text) if a.get("id") == "stale"), None)


def _stale_text(html_text: str) -> str:
    match = re.search(r'<div id="stale"[^>]*>([^<]*)</div>', html_text)
    assert match, "no stale banner"
    return match[1]


def _dated(tmp_path: Path, updated: datetime, state: str = "running") -> dict:
    document = _document(tmp_path)
    document["daemon"].update(state=state, updated_at=_iso(updated))
    return document


def _require_browser() -> str:
    browser = _browser()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium: `make test` installs it")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return browser


def _dom_after_scripts(browser: str, tmp_path: Path, document: dict, name: str) -> str:
    """The page as the daemon wrote it when `updated_at` was now (so it says nothing
    stale by itself), opened from disk in a real browser: the DOM after its script ran."""
    updated = parse_iso(document["daemon"]["updated_at"])
    text = render_page(document, tmp_path, tmp_path / "masters", now=updated)
    assert _stale_banner(text) is not None and "hidden" in _stale_banner(text)
    path = tmp_path / name
    path.write_text(text, "utf-8")
    dom = _run_browser(browser, "--dump-dom", path.resolve().as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_page_an_hour_old_says_it_is_stale_in_a_real_browser(tmp_path: Path) -> None:
    browser = _require_browser()
    now = datetime.now(UTC)
    old = _dom_after_scripts(
        browser, tmp_path, _dated(tmp_path, now - timedelta(hours=1)), "old.html"
    )
    banner = _stale_banner(old)
    assert banner is not None and "hidden" not in banner, old[:3000]
    assert re.fullmatch(
        r"Stale: flatd has not updated its status for (59|60|61) min .*", _stale_text(old)
    )
    assert '<span id="state-badge" class="badge bad">stale</span>' in old
    assert "<title>flatd — STALE — flatd — running</title>" in old

    fresh = _dom_after_scripts(browser, tmp_path, _dated(tmp_path, now), "fresh.html")
    banner = _stale_banner(fresh)
    assert banner is not None and "hidden" in banner
    assert _stale_text(fresh) == ""
    assert '<span id="state-badge" class="badge ok">running</span>' in fresh

    stopped = _dated(tmp_path, now - timedelta(hours=1), state="stopped")
    clean = _dom_after_scripts(
        browser, tmp_path, stopped, "stopped.html"
    )  # a clean stop is not stale
    assert _stale_text(clean) == "" and ">stopped</span>" in clean


def test_without_scripts_the_page_says_when_it_was_written(tmp_path: Path) -> None:
    document = _dated(tmp_path, NOW - timedelta(hours=3))
    written_then = render_page(document, tmp_path, tmp_path, now=NOW - timedelta(hours=3))
    assert "Status as of 2026-11-24 04:00:00 UTC." in written_then
    assert "<noscript><p>Scripts are off" in written_then
    # rendered from a status that is already old, the page is stale without any script
    late = render_page(document, tmp_path, tmp_path, now=NOW)
    banner = _stale_banner(late)
    assert banner is not None and "hidden" not in banner
    assert _stale_text(late).startswith("Stale: flatd has not updated its status for 3 h 0 min")
    fresh = render_page(_dated(tmp_path, NOW - timedelta(seconds=20)), tmp_path, tmp_path, now=NOW)
    assert "hidden" in (_stale_banner(fresh) or {})


# -- recent masters and what changed (issue 14, item 9) -----------------------------------------
def _history_entry(masters: Path, day: int, rms: float | None, flagged: bool = False) -> dict:
    return {
        "path": str(masters / f"flat_r_SIMCAM_1_1_202611{day:02d}T173000.fits"),
        "start": f"2026-11-{day:02d}T17:30:00Z",
        "created_at": _iso(datetime(2026, 11, day, 18, 0, tzinfo=UTC)),
        "n_frames": 6 + day % 3,
        "n_rejected": day % 2,
        "promoted": not flagged,
        "qa": {
            "change_rms": rms,
            "changed_fraction": 0.0,
            "masked_fraction": 0.001,
            "flagged": flagged,
        },
    }


def test_each_group_shows_its_recent_masters_with_their_qa(tmp_path: Path) -> None:
    document = _document(tmp_path)
    masters = tmp_path / "masters"
    history = [
        _history_entry(masters, 23, 0.031, flagged=True),
        _history_entry(masters, 22, 0.004),
        _history_entry(masters, 21, None),  # the first master: no previous one
    ]
    document["groups"][1].update(history=history, latest_master=history[0]["path"])
    text = render_page(document, tmp_path, masters, now=NOW)
    card = text[text.index("<h2>r_SIMCAM_1_1") : text.index("<h2>i_SIMCAM_1_1")]
    assert "Recent masters (3): QA over time" in card
    rows = re.findall(r"<tr( class=\"flagged\")?><td>(flat_r_[^<]+)</td>", card)
    assert [(bool(c), n) for c, n in rows] == [
        (True, "flat_r_SIMCAM_1_1_20261123T173000.fits"),
        (False, "flat_r_SIMCAM_1_1_20261122T173000.fits"),
        (False, "flat_r_SIMCAM_1_1_20261121T173000.fits"),
    ]
    assert "<td>0.031</td>" in card and "<td>0.004</td>" in card and "<td>—</td>" in card
    assert "<dd>flat_r_SIMCAM_1_1_20261123T173000.fits</dd>" in card  # the latest one
    assert "QA flagged" in card
    # the sparkline: the two masters that have a change rms, the flagged one in red, last
    svg = card[card.index("<svg") : card.index("</svg>")]
    circles = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="\d" fill="(#\w+)"/>', svg)
    assert [c[2] for c in circles] == ["#1d2330", "#c62828"]
    assert float(circles[1][1]) < float(circles[0][1])  # 0.031 drawn above 0.004


def test_the_ratio_picture_of_the_latest_master_is_shown(tmp_path: Path) -> None:
    document = _document(tmp_path)
    _previews(document)
    master = Path(document["masters"][0]["path"])
    document["masters"][0]["qa"]["previous"] = str(master.with_name("flat_g_prev.fits"))
    blocks = np.zeros((8, 12), np.float32)
    blocks[2:4, 5:7] = -0.05
    ratio = write_ratio_picture(master, blocks, np.zeros((8, 12), bool), "ratio")
    path = _write(tmp_path, document)
    text = path.read_text("utf-8")
    images = [a["src"] for t, a in _tags(text) if t == "img"]
    assert "masters/flat_g_SIMCAM_1_1_20261123T173000_ratio.png" in images
    assert all((path.parent / str(src)).is_file() for src in images)
    assert ratio.is_file()
    assert "What changed: this master / the previous one (flat_g_prev.fits)" in text


def test_what_the_page_says_of_a_groups_frames_and_masters(tmp_path: Path) -> None:
    """Inputs gone, frames held, duplicates, a confirmed change, other settings."""
    document = _document(tmp_path)
    g = document["groups"][0]
    g["gone"] = [{"path": "/data/old/flat_g_001.fits", "master": g["latest_master"]}]
    g["gone_count"] = 3
    g["held"] = "2 new frame(s) not combined: 1 of the 6 inputs ... are gone from disk"
    g["duplicates"] = [{"path": "/backup/flat_g_002.fits", "duplicate_of": "/data/flat_g_002.fits"}]
    document["masters"][0]["qa"] = {
        "confirmed": True,
        "flagged": False,
        "previous": "/data/masters/flat_g_SIMCAM_1_1_20261122T173000.fits",
        "change_rms": 0.0125,
    }
    document["masters"][0]["other_settings"] = ["combine.sigma_high = 5 (now 4)"]
    text = render_page(document, tmp_path, tmp_path / "masters", now=NOW)
    card = text.split('<article class="card">')[1]
    assert '<span class="badge ok">change confirmed</span>' in card and "QA flagged" not in card
    assert "<dt>inputs gone</dt><dd>3 (the masters stay): flat_g_001.fits</dd>" in card
    assert "<dt>not combined</dt><dd>2 new frame(s) not combined" in card
    assert "/backup/flat_g_002.fits of /data/flat_g_002.fits" in card
    assert "combine.sigma_high = 5 (now 4) (flatd remake)" in card
    assert "<dt>QA</dt><dd>change confirmed (change rms 0.0125)</dd>" in card  # no "False"
    assert "<dt>compared with</dt><dd>flat_g_SIMCAM_1_1_20261122T173000.fits</dd>" in card
