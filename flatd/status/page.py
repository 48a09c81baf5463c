"""The morning observer's page: `index.html` beside the status file, rewritten with it.

One static HTML file with inline CSS: the daemon's state, then one card per group with its
latest master's preview PNG and the picture of what changed since the previous master
(when `output.preview` drew them), frames used and rejected, the master's age and QA, the
group's recent masters with their QA over time (a table and a small inline SVG), and the
recent errors. A meta refresh reloads it every minute.

The page says when it is stale. It is rewritten with every status write (at least every
10 s), so a page whose `updated_at` is older than STALE_SECONDS means the daemon stopped
writing: crashed, killed, hung, or its disk is full. A page opened from disk long after
the daemon died is never rewritten, so one small inline script (its only script, allowed
by hash in the page's Content-Security-Policy, and holding no value from a header)
compares the embedded `updated_at` with the browser's clock, every few seconds, and turns
the state badge into "stale" with a banner saying for how long. Without scripts the page
still reads correctly: it says when the status was written and how to read that time.

Everything that came from a FITS header or a file name is HTML-escaped, and image links
are relative to the page's directory so the page works opened as a file or served by any
web server. Written atomically, like the status file it mirrors.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flatd.atomic import atomic_write_bytes
from flatd.pictures.preview import preview_path, ratio_path
from flatd.reasons import one_line
from flatd.status import present
from flatd.status.present import ago as _ago
from flatd.status.present import duration as _duration
from flatd.status.present import group_name as _group_name
from flatd.status.present import stamp as _stamp
from flatd.status.schema import STALE_SECONDS, parse_iso, utc_iso

PAGE_NAME = "index.html"
REFRESH_SECONDS = 60
MAX_ERRORS_SHOWN = 20
MAX_REJECTS_SHOWN = 10
MAX_HISTORY_SHOWN = 12
LIVE_STATES = ("starting", "running", "stopping")  # states a stale page contradicts
SPARK_WIDTH, SPARK_HEIGHT = 240, 40

# The page's only script: the stale check. Static (its values are read from the body's
# data attributes), so its hash is a constant of the Content-Security-Policy.
_STALE_SCRIPT = """
(function () {
  var body = document.body;
  var updated = Date.parse(body.getAttribute("data-updated-at") || "");
  var limit = 1000 * Number(body.getAttribute("data-stale-after"));
  if (body.getAttribute("data-live") !== "true" || isNaN(updated) || !(limit > 0)) return;
  var banner = document.getElementById("stale");
  var badge = document.getElementById("state-badge");
  var title = document.title;
  function duration(ms) {
    var s = Math.floor(ms / 1000), m = Math.floor(s / 60), h = Math.floor(m / 60);
    var d = Math.floor(h / 24);
    if (s < 120) return s + " s";
    if (m < 120) return m + " min";
    if (h < 48) return h + " h " + (m % 60) + " min";
    return d + " d " + (h % 24) + " h";
  }
  function check() {
    var age = Date.now() - updated;
    var stale = age > limit;
    banner.hidden = !stale;
    if (!stale) return;
    banner.textContent = "Stale: flatd has not updated its status for " + duration(age) +
      " (it does at least every 30 s while it runs). It has stopped, crashed or hung, or" +
      " cannot write its status file: check `flatd status` and the log.";
    badge.textContent = "stale";
    badge.className = "badge bad";
    document.title = "flatd — STALE — " + title;
  }
  check();
  setInterval(check, 5000);
})();
"""
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_STALE_SCRIPT.encode()).digest()).decode()
_CSP = f"script-src 'sha256-{_SCRIPT_HASH}'; object-src 'none'; base-uri 'none'"

__all__ = ["PAGE_NAME", "page_path", "render_page", "write_page"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;
color:#1d2330}
header{background:#1d2330;color:#f4f5f7;padding:14px 24px}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c4c9d4;font-size:14px}
main{padding:16px 24px}
.groups{display:flex;flex-direction:column;gap:16px}
.card{background:#fff;border:1px solid #d8dbe2;border-radius:6px;padding:12px 16px;
max-width:1120px}
.card h2{margin:0 0 6px;font-size:18px;overflow-wrap:anywhere}
.card img{width:100%;height:auto;border:1px solid #e3e5ea;margin-top:8px}
.facts{margin:0;font-size:14px;display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}
.facts dt{color:#5b6375}.facts dd{margin:0;overflow-wrap:anywhere}
.badge{display:inline-block;border-radius:4px;padding:1px 8px;font-size:13px;
font-weight:600;vertical-align:middle;margin-left:6px}
.ok{background:#d6f5dd;color:#17622b}.busy{background:#fff1c9;color:#7a5600}
.bad{background:#fbd9d9;color:#8e1b1b}.other{background:#e3e5ea;color:#333}
.none{color:#5b6375;font-style:italic}
table{border-collapse:collapse;font-size:14px;background:#fff;width:100%}
td,th{border:1px solid #d8dbe2;padding:4px 8px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
ul.rejects{margin:6px 0 0;padding-left:20px;font-size:13px;color:#8e1b1b}
.stale{background:#8e1b1b;color:#fff;padding:10px 24px;font-weight:600}
.pictures{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
.pictures figure{margin:0;flex:2 1 560px}.pictures figure.ratio{flex:1 1 320px}
.pictures figcaption{font-size:13px;color:#5b6375}
details{margin-top:8px;font-size:14px}
table.history{font-size:13px;margin-top:6px}
table.history tr.flagged td{background:#fbd9d9}
svg.spark{display:block;margin-top:6px;background:#f8f9fb;border:1px solid #e3e5ea}
footer{padding:8px 24px 24px;color:#5b6375;font-size:13px}
"""


def page_path(status_path: Path) -> Path:
    """Where the page of a status file goes: `index.html` in the same directory."""
    return Path(status_path).parent / PAGE_NAME


def write_page(status_document: Mapping[str, Any], status_path: Path, output_dir: Path) -> Path:
    """Render `status_document` into `index.html` beside `status_path`, atomically.

    `output_dir` is where the masters are written; relative master paths in the document
    are taken relative to it. Returns the page's path."""
    path = page_path(status_path)
    text = render_page(
        status_document, path.parent, Path(output_dir), status_name=Path(status_path).name
    )
    # a file name that is not UTF-8 shows as its escaped bytes rather than stop the page
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))
    return path


def render_page(
    document: Mapping[str, Any],
    page_dir: Path,
    output_dir: Path,
    *,
    status_name: str = "status.json",
    now: datetime | None = None,
) -> str:
    """The page's HTML for a status document, with links relative to `page_dir`."""
    now = now or datetime.now(UTC)
    daemon = _dict(document.get("daemon"))
    groups = [g for g in _list(document.get("groups")) if isinstance(g, dict)]
    masters = [m for m in _list(document.get("masters")) if isinstance(m, dict)]
    errors = [e for e in _list(document.get("errors")) if isinstance(e, dict)]
    state = str(daemon.get("state", "unknown"))
    updated = parse_iso(daemon.get("updated_at"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>flatd — {_e(state)}</title>",
        f"<style>{_CSS}</style></head>",
        _body_tag(state, updated),
        f"<header><h1>flatd {_badge(state, 'state-badge')}</h1>",
        f"<p>{_e(_daemon_line(daemon, now))}</p>",
        f"<p>{_e(_index_line(document))}</p>",
        _freshness_line(state, updated),
        "</header>",
        _stale_banner(state, updated, now),
        "<main>",
        f"<h2>Groups ({len(groups)})</h2>" if groups else '<p class="none">No flats seen yet.</p>',
        '<div class="groups">',
        *(_group_card(group, masters, page_dir, output_dir, now) for group in groups),
        "</div>",
        _errors_table(errors, now),
        "</main>",
        f"<footer>Page written {_e(_stamp(now))}; reloads every {REFRESH_SECONDS} s. "
        f'Machine-readable: <a href="{_e(status_name)}">{_e(status_name)}</a>.</footer>',
        f"<script>{_STALE_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# -- staleness --------------------------------------------------------------------------------
def _body_tag(state: str, updated: datetime | None) -> str:
    """The values the stale check reads: when the status was written, after how long it
    is stale, and whether the state claims a live daemon."""
    stamp = utc_iso(updated, timespec="auto") if updated else ""
    live = "true" if state in LIVE_STATES else "false"
    return (
        f'<body data-updated-at="{_e(stamp)}" data-stale-after="{STALE_SECONDS:g}" '
        f'data-live="{live}">'
    )


def _freshness_line(state: str, updated: datetime | None) -> str:
    """When the status was written, and (for readers without scripts) how to read it."""
    if updated is None:
        return "<p>The status has never been written.</p>"
    line = f"<p>Status as of {_e(_stamp(updated))}.</p>"
    if state in LIVE_STATES:
        line += (
            "<noscript><p>Scripts are off, so this page cannot tell its own age: flatd "
            "rewrites it at least every 30 s while it runs; if the time above is more than "
            f"{STALE_SECONDS:g} s ago, flatd has stopped (crashed, killed or hung).</p>"
            "</noscript>"
        )
    return line


def _stale_banner(state: str, updated: datetime | None, now: datetime) -> str:
    """The stale warning: shown at once when the page is rendered from an old status,
    and shown or hidden by the script by the reader's clock."""
    age = (now - updated).total_seconds() if updated else 0.0
    stale = state in LIVE_STATES and updated is not None and age > STALE_SECONDS
    text = (
        f"Stale: flatd has not updated its status for {_duration(age)} (it does at least "
        "every 30 s while it runs)."
    )
    if not stale:
        return '<div id="stale" class="stale" role="alert" hidden></div>'
    return f'<div id="stale" class="stale" role="alert">{_e(text)}</div>'


# -- a group's card ---------------------------------------------------------------------------
def _group_card(
    group: dict[str, Any],
    masters: list[dict[str, Any]],
    page_dir: Path,
    output_dir: Path,
    now: datetime,
) -> str:
    name = _group_name(group)
    history = _history_of(group, masters)
    master = _master_of(group, history, masters)
    gstate = str(group.get("state", "?"))
    title = f"<h2>{_e(name)} {_badge(gstate)}"
    qa = _dict(master.get("qa")) if master else {}
    if qa.get("confirmed"):
        title += ' <span class="badge ok">change confirmed</span>'
    elif qa.get("flagged"):
        title += ' <span class="badge bad">QA flagged</span>'
    title += "</h2>"
    facts = _group_facts(group, gstate, now)
    pictures = ""
    if master:
        facts += _master_facts(master, now)
        pictures = _pictures(master, page_dir, output_dir, name)
    elif group.get("latest_master"):
        facts.append(("latest master", Path(str(group["latest_master"])).name))
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return (
        f'<article class="card">{title}<dl class="facts">{body}</dl>'
        f"{_rejects(group)}{pictures}{_history(history, now)}</article>"
    )


def _group_facts(group: dict[str, Any], gstate: str, now: datetime) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = []
    keys = _dict(group.get("group"))
    if keys:
        facts.append(("group", ", ".join(f"{k}={v}" for k, v in keys.items())))
    facts.append(("frames seen", str(group.get("frames", "?"))))
    stable = parse_iso(group.get("stable_at"))
    if gstate in ("waiting", "pending") and stable is not None:
        facts.append(("combines", _when(now, stable)))
    if group.get("reason") and gstate != "done":
        facts.append(("why", one_line(group["reason"])))
    facts.extend(("note", one_line(note)) for note in _list(group.get("notes")))
    return facts + _trust_facts(group)


def _trust_facts(group: dict[str, Any]) -> list[tuple[str, str]]:
    """New frames waiting, inputs gone from disk, duplicates: one fact each."""
    facts = []
    if group.get("held"):
        facts.append(("not combined", one_line(group["held"])))
    gone = [g for g in _list(group.get("gone")) if isinstance(g, dict)]
    if gone:
        count = group.get("gone_count") or len(gone)
        names = ", ".join(Path(str(g.get("path"))).name for g in gone[:3])
        facts.append(("inputs gone", f"{count} (the masters stay): {names}"))
    for duplicate in [d for d in _list(group.get("duplicates")) if isinstance(d, dict)][:5]:
        facts.append(("duplicate", f"{duplicate.get('path')} of {duplicate.get('duplicate_of')}"))
    return facts


def _master_facts(master: dict[str, Any], now: datetime) -> list[tuple[str, str]]:
    created = parse_iso(master.get("created_at"))
    used, rejected = master.get("n_frames", "?"), master.get("n_rejected", 0)
    facts = [
        ("latest master", Path(str(master.get("path", "?"))).name),
        ("written", f"{_ago(now, created)} ({_stamp(created)})" if created else "?"),
        ("frames used / rejected", f"{used} / {rejected}"),
    ]
    qa = _dict(master.get("qa"))
    if qa:
        facts.append(("QA", _qa_summary(qa)))
    if qa.get("previous"):
        facts.append(("compared with", Path(str(qa["previous"])).name))
    for extension in _list(qa.get("extensions")):  # a mosaic's: each extension's own
        if isinstance(extension, dict):
            facts.append((f"QA {extension.get('name', '?')}", _qa_summary(extension)))
    other = [str(o) for o in _list(master.get("other_settings"))]
    if other:
        facts.append(("made with other settings", "; ".join(other) + " (flatd remake)"))
    return facts


def _pictures(master: dict[str, Any], page_dir: Path, output_dir: Path, name: str) -> str:
    """The master's preview and, when it has a previous master, the ratio picture."""
    path = Path(str(master.get("path", "")))
    if not path.name:
        return ""
    if not path.is_absolute():
        path = output_dir / path
    png, ratio = preview_path(path), ratio_path(path)
    if not png.is_file():
        return '<p class="none">No preview (output.preview = false, or not drawn yet).</p>'
    figures = [_figure(png, page_dir, f"master flat and input levels of {name}", "", "")]
    if ratio.is_file():
        previous = Path(str(_dict(master.get("qa")).get("previous") or "?")).name
        caption = f"What changed: this master / the previous one ({previous})"
        figures.append(_figure(ratio, page_dir, f"{caption} of {name}", caption, "ratio"))
    return f'<div class="pictures">{"".join(figures)}</div>'


def _figure(png: Path, page_dir: Path, alt: str, caption: str, css_class: str) -> str:
    link = Path(os.path.relpath(png, page_dir)).as_posix()
    klass = f' class="{css_class}"' if css_class else ""
    text = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return (
        f'<figure{klass}><a href="{_e(link)}"><img src="{_e(link)}" alt="{_e(alt)}"></a>'
        f"{text}</figure>"
    )


# -- the group's recent masters ---------------------------------------------------------------
HISTORY_COLUMNS = (
    "master",
    "written",
    "frames used / rejected",
    "change rms",
    "changed blocks",
    "masked",
    "QA",
)


def _history_of(group: dict[str, Any], masters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The group's recent masters, newest first, one per file: its `history`, else the
    status file's masters of the same group."""
    if isinstance(group.get("history"), list):
        entries = [h for h in group["history"] if isinstance(h, dict)]
    else:
        keys = group.get("group")
        entries = [m for m in masters if keys and m.get("group") == keys]
    unique: dict[str, dict[str, Any]] = {}
    for entry in entries:
        unique.setdefault(str(entry.get("path")), entry)
    return list(unique.values())[:MAX_HISTORY_SHOWN]


def _history(history: list[dict[str, Any]], now: datetime) -> str:
    """The recent masters' QA over time: a sparkline and a table (from two masters on)."""
    if len(history) < 2:
        return ""
    rows = []
    for entry in history:
        qa = _dict(entry.get("qa"))
        cells = [
            Path(str(entry.get("path", "?"))).name,
            _ago(now, parse_iso(entry.get("created_at"))),
            f"{entry.get('n_frames', '?')} / {entry.get('n_rejected', '?')}",
            _number(qa.get("change_rms"), "—"),
            _number(qa.get("changed_fraction"), "—"),
            _number(qa.get("masked_fraction"), "—"),
            "FLAGGED" if qa.get("flagged") else "ok",
        ]
        flagged = ' class="flagged"' if qa.get("flagged") else ""
        rows.append(f"<tr{flagged}>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in HISTORY_COLUMNS)
    return (
        f"<details open><summary>Recent masters ({len(history)}): QA over time</summary>"
        f'{_sparkline(history)}<table class="history"><tr>{head}</tr>{"".join(rows)}</table>'
        "</details>"
    )


def _sparkline(history: list[dict[str, Any]]) -> str:
    """The change rms of the recent masters, oldest left, as a small inline SVG; flagged
    masters in red. Numbers only: nothing from a header reaches it."""
    points = []
    for i, entry in enumerate(reversed(history)):
        qa = _dict(entry.get("qa"))
        value = qa.get("change_rms")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            points.append((i, float(value), bool(qa.get("flagged"))))
    if len(points) < 2:
        return ""
    top = max(v for _, v, _ in points) or 1.0
    step = (SPARK_WIDTH - 12) / max(1, len(history) - 1)
    xy = [(6 + i * step, SPARK_HEIGHT - 6 - (SPARK_HEIGHT - 12) * v / top) for i, v, _ in points]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{3 if bad else 2}" '
        f'fill="{"#c62828" if bad else "#1d2330"}"/>'
        for (x, y), (_, _, bad) in zip(xy, points, strict=True)
    )
    return (
        f'<svg class="spark" width="{SPARK_WIDTH}" height="{SPARK_HEIGHT}" role="img" '
        f'viewBox="0 0 {SPARK_WIDTH} {SPARK_HEIGHT}"><title>change rms of the recent masters, '
        f"oldest left (max {top:.4g}); flagged in red</title>"
        f'<polyline points="{line}" fill="none" stroke="#5b6375" stroke-width="1.5"/>{dots}</svg>'
    )


_QA_NOT_NUMBERS = ("flagged", "confirmed", "reason", "name", "extensions", "previous", "reference")


def _qa_summary(qa: dict[str, Any]) -> str:
    """The master's QA record in one line: the verdict and reason first, then the numbers
    that were measured (unset ones left out)."""
    verdict = "change confirmed" if qa.get("confirmed") else "ok"
    verdict = "FLAGGED" if qa.get("flagged") else verdict
    if qa.get("reason"):
        verdict += f": {qa['reason']}"
    numbers = [
        f"{key.replace('_', ' ')} {_number(value)}"
        for key, value in qa.items()
        if key not in _QA_NOT_NUMBERS and not isinstance(value, bool) and value not in (None, "")
    ]
    return verdict + (f" ({', '.join(numbers)})" if numbers else "")


def _number(value: object, missing: str | None = None) -> str:
    if value is None and missing is not None:
        return missing
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _rejects(group: dict[str, Any]) -> str:
    rejected = [r for r in _list(group.get("rejected")) if isinstance(r, dict)]
    if not rejected:
        return ""
    items = "".join(
        f"<li>{_e(Path(str(r.get('path', '?'))).name)}: {_e(one_line(r.get('reason', '?')))}</li>"
        for r in rejected[:MAX_REJECTS_SHOWN]
    )
    more = len(rejected) - MAX_REJECTS_SHOWN
    if more > 0:
        items += f"<li>… and {more} more</li>"
    return f'<ul class="rejects">{items}</ul>'


def _errors_table(errors: list[dict[str, Any]], now: datetime) -> str:
    if not errors:
        return '<h2>Recent errors</h2><p class="none">None.</p>'
    rows = []
    for error in errors[:MAX_ERRORS_SHOWN]:
        at = parse_iso(error.get("at"))
        count = error.get("count", 1)
        times = f" (×{count})" if isinstance(count, int) and count > 1 else ""
        rows.append(
            f"<tr><td>{_e(_ago(now, at))}</td><td>{_e(error.get('path') or '—')}</td>"
            f"<td>{_e(one_line(error.get('reason', '?')) + times)}</td></tr>"
        )
    more = len(errors) - MAX_ERRORS_SHOWN
    tail = f'<p class="none">… and {more} older</p>' if more > 0 else ""
    return (
        f"<h2>Recent errors ({len(errors)})</h2><table><tr><th>when</th><th>file</th>"
        f"<th>reason</th></tr>{''.join(rows)}</table>{tail}"
    )


def _master_of(
    group: dict[str, Any], history: list[dict[str, Any]], masters: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The group's latest master record: the one at its `latest_master` path, else the
    newest record of the same group, else the newest of its history."""
    latest = group.get("latest_master")
    if latest:
        for master in history + masters:
            if master.get("path") == latest:
                return master
    keys = group.get("group")
    for master in masters:
        if keys and master.get("group") == keys:
            return master
    return history[0] if history else None


def _daemon_line(daemon: dict[str, Any], now: datetime) -> str:
    facts = [f"pid {daemon.get('pid', '?')}", f"version {daemon.get('version', '?')}"]
    started = parse_iso(daemon.get("started_at"))
    updated = parse_iso(daemon.get("updated_at"))
    if started is not None:
        facts.append(f"started {_stamp(started)}")
    facts.append(f"status updated {_stamp(updated)}" if updated else "never updated")
    return ", ".join(facts)


def _index_line(document: Mapping[str, Any]) -> str:
    index = _dict(document.get("index"))
    watch = _dict(document.get("watch"))
    where = ", ".join(str(d) for d in _list(watch.get("directories"))) or "(nothing)"
    counts = ", ".join(f"{v} {k}" for k, v in index.items())
    return f"watching {where} ({watch.get('observer', '?')})" + (f"; {counts}" if counts else "")


def _badge(state: str, element_id: str = "") -> str:
    id_attribute = f' id="{element_id}"' if element_id else ""
    css = present.tone(state)
    return f'<span{id_attribute} class="badge {css}">{_e(state)}</span>'


def _when(now: datetime, moment: datetime) -> str:
    return f"{present.when(now, moment)} ({_stamp(moment)})"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
