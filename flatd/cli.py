"""The `flatd` commands of SPEC.md: parse arguments, load the config, call one function each."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence as Seq
from datetime import date
from pathlib import Path

import tomli_w

from flatd import __version__
from flatd.config import Config, ConfigError, find_config, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
ONE_SHOT = ("combine", "scan", "promote", "remake")


def main(argv: Seq[str] | None = None) -> int:
    """Entry point of the `flatd` console script; returns the process exit status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(with_simulate="simulate" in arguments)
    args = parser.parse_args(arguments)
    if args.command == "simulate":
        from flatd.simulation import flats as simulate

        return simulate.run(args)
    try:
        config = load_config(find_config(args.config))
    except ConfigError as exc:
        print(f"flatd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check-config":
        return _check_config(config)
    _configure_logging(args, config)
    if args.command in ONE_SHOT:
        return _one_shot(args, config)
    return args.handler(args, config)


def _one_shot(args: argparse.Namespace, config: Config) -> int:
    """Run a one-shot command; whatever it raises ends it with one line and status 1,
    never a traceback (which `--log-level debug` still shows)."""
    try:
        status: int = args.handler(args, config)
    except Exception as exc:
        import structlog

        from flatd.reasons import reason_of

        structlog.get_logger("flatd.cli").debug("command_failed", exc_info=True)
        print(f"flatd {args.command}: failed: {reason_of(exc)}", file=sys.stderr)
        return EXIT_FAILED
    return status


def _parser(with_simulate: bool = True) -> argparse.ArgumentParser:
    """The command line; `simulate`'s own options only `with_simulate` (importing the
    simulator costs astropy's 0.3 s import, which no other command should wait for)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $FLATD_CONFIG, ./config.toml, "
        "/etc/flatd/config.toml, else built-in defaults)",
    )
    common.add_argument(
        "--log-format", choices=("json", "console", "auto"), help="override [log] format"
    )
    common.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="override [log] level"
    )
    parser = argparse.ArgumentParser(
        prog="flatd", description="Keep a fresh master flat for every filter."
    )
    parser.add_argument("--version", action="version", version=f"flatd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="the daemon, in the foreground")
    run.set_defaults(handler=_run)

    combine = commands.add_parser(
        "combine", parents=[common], help="combine the flats in PATHs once and write masters"
    )
    combine.add_argument(
        "--output", metavar="DIR", type=Path, help="where masters go (default: [output] directory)"
    )
    combine.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    combine.set_defaults(handler=_combine)

    scan = commands.add_parser(
        "scan", parents=[common], help="show what flatd sees in PATHs: groups, sequences, rejects"
    )
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    scan.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    scan.set_defaults(handler=_scan)

    status = commands.add_parser("status", parents=[common], help="what the daemon is doing")
    status.add_argument("--json", action="store_true", help="print the status document")
    status.set_defaults(handler=_status)

    promote = commands.add_parser(
        "promote",
        parents=[common],
        help="accept a master QA held back (it may become latest/), or --demote one",
    )
    word = promote.add_mutually_exclusive_group()
    word.add_argument(
        "--demote", action="store_true", help="refuse the master: it is never latest/"
    )
    word.add_argument("--reset", action="store_true", help="forget the decision: QA decides")
    promote.add_argument("path", type=Path, metavar="PATH", help="a master, or a latest/ entry")
    promote.set_defaults(handler=_promote)

    remake = commands.add_parser(
        "remake",
        parents=[common],
        help="make masters again (after a change of recipe or QA limits)",
    )
    remake.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="masters to remake")
    remake.add_argument("--group", metavar="G", help="the group's masters made with other settings")
    remake.add_argument("--all", action="store_true", help="every master made with other settings")
    remake.add_argument(
        "--since",
        type=_night,
        metavar="DATE",
        help="only sequences started on or after DATE (YYYY-MM-DD, UTC); alone: --all --since",
    )
    remake.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="how long to wait for a running daemon's results (default 600)",
    )
    remake.set_defaults(handler=_remake)

    commands.add_parser(
        "check-config",
        parents=[common],
        help="validate the config and print the effective configuration",
    )

    simulate = commands.add_parser(
        "simulate", parents=[common], help="a fake camera writing flat sequences into OUTDIR"
    )
    if with_simulate:
        from flatd.simulation import flats as simulator

        simulator.add_arguments(simulate)
    return parser


def _configure_logging(args: argparse.Namespace, config: Config) -> None:
    from flatd.logs import configure_logging

    configure_logging(
        args.log_format or config.log.format,
        args.log_level or config.log.level,
        stream=sys.stdout if args.command == "run" else sys.stderr,
    )


def _check_config(config: Config) -> int:
    """Print the effective configuration; warnings that do not stop `flatd run` (a master
    bias that is not there yet) go to stderr."""
    from flatd.calibrate.recipe import settings_notes

    source = config.source or "built-in defaults (no config file found)"
    print(f"# effective configuration from {source}")
    print(tomli_w.dumps(config.to_dict()), end="")
    for note in settings_notes(config.calibrate):
        print(f"flatd check-config: warning: {note}", file=sys.stderr)
    return EXIT_OK


def _run(args: argparse.Namespace, config: Config) -> int:
    import astropy.io.fits  # noqa: F401 - once, before the daemon's threads may need it

    from flatd.daemon.service import run

    return run(config, log_format=args.log_format, log_level=args.log_level)


def _status(args: argparse.Namespace, config: Config) -> int:
    from flatd.status import status_command

    return status_command(config.status.file, as_json=args.json, color=sys.stdout.isatty())


def _promote(args: argparse.Namespace, config: Config) -> int:
    from flatd.outputs.curate import promote_command

    if args.reset:
        return promote_command(config, args.path, None)
    return promote_command(config, args.path, "demote" if args.demote else "promote")


def _night(text: str) -> date:
    """A `--since` date: YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _remake(args: argparse.Namespace, config: Config) -> int:
    from flatd.outputs.curate import remake_command

    return remake_command(config, args.paths, args.group, args.all, args.timeout, args.since)


def _scan(args: argparse.Namespace, config: Config) -> int:
    from flatd.oneshot import scan_report

    if _missing(args):
        return EXIT_USAGE
    report = scan_report(args.paths, config)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render())
    return EXIT_OK


def _combine(args: argparse.Namespace, config: Config) -> int:
    from flatd.engine import log_choice, tune_allocator
    from flatd.oneshot import combine_paths

    if _missing(args):
        return EXIT_USAGE
    tune_allocator()
    log_choice()
    summary = combine_paths(
        args.paths, config, output_dir=args.output, show_progress=sys.stderr.isatty()
    )
    print(summary.render())
    if not summary.written:
        print(f"flatd combine: no master written: {summary.why_no_master()}", file=sys.stderr)
    return EXIT_FAILED if summary.failed else EXIT_OK


def _missing(args: argparse.Namespace) -> bool:
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(
            f"flatd {args.command}: no such file or directory: {', '.join(missing)}",
            file=sys.stderr,
        )
    return bool(missing)
