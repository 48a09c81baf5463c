"""The morning observer's page: `index.html` beside the status file, rewritten with it.

One static HTML file with inline CSS and no scripts: the daemon's state, then one card per
group with its latest master's preview PNG (when `output.preview` drew one), frames used
and rejected, the master's age and QA flag, and the recent errors. A meta refresh reloads
it every minute. Everything that came from a FITS header or a file name is HTML-escaped,
and image links are relative to the page's directory so the page works opened as a file
or served by any web server. Written atomically, like the status file it mirrors.
"""

from __future__ import annotations

import html
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flatd.atomic import atomic_write_bytes
from flatd.reasons import one_line
from flatd.status import parse_iso

PAGE_NAME = "index.html"
REFRESH_SECONDS = 60
MAX_ERRORS_SHOWN = 20
MAX_REJECTS_SHOWN = 10

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
footer{padding:8px 24px 24px;color:#5b6375;font-size:13px}
"""

_STATE_CLASS = {
    "running": "ok",
    "done": "ok",
    "waiting": "busy",
    "pending": "busy",
    "combining": "busy",
    "starting": "busy",
    "stopping": "busy",
    "too_few": "bad",
    "stopped": "bad",
    "failed": "bad",
    "error": "bad",
}


def page_path(status_path: Path) -> Path:
    """Where the page of a status file goes: `index.html` in the same directory."""
    return Path(status_path).parent / PAGE_NAME


def write_page(status_document: dict, status_path: Path, output_dir: Path) -> Path:
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
    document: dict[str, Any],
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
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>flatd — {_e(state)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>flatd {_badge(state)}</h1>",
        f"<p>{_e(_daemon_line(daemon, now))}</p>",
        f"<p>{_e(_index_line(document))}</p></header>",
        "<main>",
        f"<h2>Groups ({len(groups)})</h2>" if groups else '<p class="none">No flats seen yet.</p>',
        '<div class="groups">',
    ]
    for group in groups:
        parts.append(_group_card(group, _master_of(group, masters), page_dir, output_dir, now))
    parts.append("</div>")
    parts.append(_errors_table(errors, now))
    parts.append("</main>")
    parts.append(
        f"<footer>Page written {_e(_stamp(now))}; reloads every {REFRESH_SECONDS} s. "
        f'Machine-readable: <a href="{_e(status_name)}">{_e(status_name)}</a>.'
        "</footer>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -- pieces -----------------------------------------------------------------------------------
def _group_card(
    group: dict[str, Any],
    master: dict[str, Any] | None,
    page_dir: Path,
    output_dir: Path,
    now: datetime,
) -> str:
    name = _group_name(group)
    gstate = str(group.get("state", "?"))
    title = f"<h2>{_e(name)} {_badge(gstate)}"
    qa = _dict(master.get("qa")) if master else {}
    if qa.get("flagged"):
        title += ' <span class="badge bad">QA flagged</span>'
    title += "</h2>"
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
    image = ""
    if master:
        created = parse_iso(master.get("created_at"))
        used, rejected = master.get("n_frames", "?"), master.get("n_rejected", 0)
        facts.append(("latest master", Path(str(master.get("path", "?"))).name))
        facts.append(("written", f"{_ago(now, created)} ({_stamp(created)})" if created else "?"))
        facts.append(("frames used / rejected", f"{used} / {rejected}"))
        if qa:
            facts.append(("QA", _qa_summary(qa)))
        image = _preview(master, page_dir, output_dir, name)
    elif group.get("latest_master"):
        facts.append(("latest master", Path(str(group["latest_master"])).name))
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return (
        f'<article class="card">{title}<dl class="facts">{body}</dl>'
        f"{_rejects(group)}{image}</article>"
    )


def _preview(master: dict[str, Any], page_dir: Path, output_dir: Path, name: str) -> str:
    path = Path(str(master.get("path", "")))
    if not path.name:
        return ""
    if not path.is_absolute():
        path = output_dir / path
    png = path.with_suffix(".png")
    if not png.is_file():
        return '<p class="none">No preview (output.preview = false, or not drawn yet).</p>'
    link = Path(os.path.relpath(png, page_dir)).as_posix()
    return (
        f'<a href="{_e(link)}"><img src="{_e(link)}" '
        f'alt="{_e("master flat and input levels of " + name)}"></a>'
    )


def _qa_summary(qa: dict[str, Any]) -> str:
    """The master's QA record in one line: the verdict and reason first, then the numbers
    that were measured (unset ones left out)."""
    verdict = "FLAGGED" if qa.get("flagged") else "ok"
    if qa.get("reason"):
        verdict += f": {qa['reason']}"
    numbers = [
        f"{key.replace('_', ' ')} {_number(value)}"
        for key, value in qa.items()
        if key not in ("flagged", "reason") and value not in (None, "")
    ]
    return verdict + (f" ({', '.join(numbers)})" if numbers else "")


def _number(value: object) -> str:
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


def _master_of(group: dict[str, Any], masters: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The group's latest master record: the one at its `latest_master` path, else the
    newest record of the same group."""
    latest = group.get("latest_master")
    if latest:
        for master in masters:
            if master.get("path") == latest:
                return master
    keys = group.get("group")
    for master in masters:
        if keys and master.get("group") == keys:
            return master
    return None


def _daemon_line(daemon: dict[str, Any], now: datetime) -> str:
    facts = [f"pid {daemon.get('pid', '?')}", f"version {daemon.get('version', '?')}"]
    started = parse_iso(daemon.get("started_at"))
    updated = parse_iso(daemon.get("updated_at"))
    if started is not None:
        facts.append(f"started {_stamp(started)}")
    facts.append(f"status updated {_stamp(updated)}" if updated else "never updated")
    return ", ".join(facts)


def _index_line(document: dict[str, Any]) -> str:
    index = _dict(document.get("index"))
    watch = _dict(document.get("watch"))
    where = ", ".join(str(d) for d in _list(watch.get("directories"))) or "(nothing)"
    counts = ", ".join(f"{v} {k}" for k, v in index.items())
    return f"watching {where} ({watch.get('observer', '?')})" + (f"; {counts}" if counts else "")


def _badge(state: str) -> str:
    return f'<span class="badge {_STATE_CLASS.get(state, "other")}">{_e(state)}</span>'


def _group_name(group: dict[str, Any]) -> str:
    if group.get("name"):
        return str(group["name"])
    keys = _dict(group.get("group"))
    return "_".join(str(v) for v in keys.values()) or "?"


def _stamp(moment: datetime | None) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if moment else "?"


def _ago(now: datetime, moment: datetime | None) -> str:
    if moment is None:
        return "?"
    seconds = int((now - moment).total_seconds())
    if seconds < 5:
        return "just now"
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min ago"
    return f"{seconds // 86400} d ago"


def _when(now: datetime, moment: datetime) -> str:
    seconds = (moment - now).total_seconds()
    return "now" if seconds <= 0 else f"in {round(seconds)} s ({_stamp(moment)})"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
