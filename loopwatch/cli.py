"""Command line: ``loopwatch run|report|demo`` (or ``python -m loopwatch ...``).

Usage errors print one line and exit 2; they never show a traceback. A watched
script's own exceptions are shown as Python would show them, and its exit
status becomes loopwatch's; Ctrl-C ends it with the report and status 130;
``run --fail-on-block`` exits 3 when anything blocked.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import runpy
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from loopwatch.config import ConfigError
from loopwatch.model import Report
from loopwatch.session import Session, watch

#: Exit statuses of our own (a watched program's status is passed on otherwise).
USAGE_ERROR = 2
BLOCKED = 3
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program ended by Ctrl-C


def program_name(argv0: str | None = None) -> str:
    """How the user invoked us: ``loopwatch`` (the console script) or ``python -m loopwatch``."""
    name = os.path.basename(sys.argv[0] if argv0 is None else argv0)
    if name in ("", "-c", "-m", "__main__.py") or name.startswith("python"):
        return "python -m loopwatch"
    return name.removesuffix(".exe")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog or program_name(),
        description="Find what blocks your asyncio event loop.",
    )
    parser.add_argument("--version", action="version", version=f"loopwatch {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run a script or module while watching its event loops",
        description="Run a Python script (or -m module) as __main__ and report what blocked "
        "its event loops, on stderr when it finishes.",
    )
    run.add_argument("--threshold", type=_seconds, metavar="S",
                     help="report iterations busy longer than S seconds (default 0.1)")
    run.add_argument("--sample-interval", type=_seconds, metavar="S", dest="sample_interval",
                     help="seconds between stack samples of a blocking loop (default 0.002)")
    run.add_argument("--json", metavar="OUT", help="write the report as JSON to OUT")
    _add_export_flags(run)
    run.add_argument("--mode", choices=("report", "log"), default=None,
                     help="log: also log each block as it happens")
    run.add_argument("--deadman", action="store_true", default=None,
                     help="also use faulthandler to see inside C calls that hold the GIL "
                     "(see the README before using it on an overloaded machine)")
    run.add_argument("--precise", action="store_true", default=None,
                     help="time every callback, so blocks name the callback or task step")
    run.add_argument("--profile", action="store_true", default=None,
                     help="run yappi too, so blocks list the functions (C ones too) that ran; "
                     "slows the program down several times")
    run.add_argument("--strict", action="store_true", default=None,
                     help="also list every blocking call made on a loop's thread, however "
                     "short (time.sleep, open, socket.connect, subprocess...)")
    run.add_argument("--report-signal", metavar="SIG", dest="report_signal",
                     help="write the report so far to --report-file when the process gets "
                     "this signal (e.g. USR1: kill -USR1 PID)")
    run.add_argument("--report-file", metavar="OUT", dest="report_file",
                     help="where --report-signal writes it (default loopwatch-{pid}.json)")
    run.add_argument("--live", action="store_true",
                     help="show the loops, the latest blocks and the worst sites live on the "
                     "terminal while the program runs (the report follows at the end)")
    run.add_argument("--quiet", action="store_true", help="do not print the report")
    run.add_argument("--fail-on-block", action="store_true", dest="fail_on_block",
                     help=f"exit with status {BLOCKED} if anything blocked (with --strict, "
                     "also if a blocking call was made on a loop's thread), for CI jobs")
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a module, like python -m")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="script.py [args ...]")

    report = commands.add_parser(
        "report", help="print a report saved with --json (and export it)",
        description="Print a report saved with run --json; optionally export its stacks.",
    )
    report.add_argument("path", metavar="OUT.json")
    _add_export_flags(report)

    attach = commands.add_parser(
        "attach", help="watch a running Python 3.14+ process for a while",
        description="Watch the event loops of a running Python 3.14+ process (through "
        "sys.remote_exec, PEP 768), then print the report on stderr. loopwatch must be "
        "importable in that process; nothing of the watch is left in it afterwards.",
    )
    attach.add_argument("pid", type=int, metavar="PID", help="the process to watch")
    attach.add_argument("--duration", type=_seconds, metavar="S",
                        help="watch for S seconds (default: until Ctrl-C)")
    attach.add_argument("--threshold", type=_seconds, metavar="S",
                        help="report iterations busy longer than S seconds (default 0.1)")
    attach.add_argument("--json", metavar="OUT", help="write the report as JSON to OUT")
    attach.add_argument("--live", action="store_true",
                        help="show the watch live on the terminal (the process writes its "
                        "report so far every half second)")
    _add_export_flags(attach)
    attach.add_argument("--timeout", type=_seconds, metavar="S", default=10.0,
                        help="seconds the process has to start the watch (default 10)")

    commands.add_parser("demo", help="run a short program that blocks in several ways")
    return parser


def _add_export_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speedscope", metavar="OUT",
                        help="write the blocks' stacks for speedscope (speedscope.app) to OUT")
    parser.add_argument("--collapsed", metavar="OUT",
                        help="write the blocks' stacks as collapsed lines (flamegraph.pl, "
                        "inferno) to OUT, weighted in microseconds")
    parser.add_argument("--html", metavar="OUT",
                        help="write the report as one self-contained HTML page to OUT "
                        "(timelines, blocks with their source, sortable sites; works offline)")


#: ``run``'s options that take a value as the next word (``--json OUT``).
_RUN_VALUE_OPTIONS = frozenset(
    {"--threshold", "--sample-interval", "--json", "--mode", "--speedscope", "--collapsed",
     "--html", "--report-signal", "--report-file"}
)


def _split_module_run(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split ``run ... -m MODULE ARGS`` after MODULE: everything after it is the program's.

    As with ``python -m``, options after the module (``-m aiohttp.web -H host``)
    belong to the module, not to loopwatch; argparse alone would take them.
    Returns (loopwatch's words, the module's arguments or None without ``-m``).
    """
    if not argv or argv[0] != "run":
        return argv, None
    index = 1
    while index < len(argv):
        word = argv[index]
        if word == "-m":
            return argv[: index + 2], argv[index + 2 :]
        if word.startswith("-m") and not word.startswith("--"):
            return argv[: index + 1], argv[index + 1 :]  # -mmodule, as python takes it
        if word == "--" or not word.startswith("-"):
            return argv, None  # a script: argparse hands it and the rest on already
        index += 2 if word in _RUN_VALUE_OPTIONS else 1
    return argv, None


def _version() -> str:
    import loopwatch

    return str(loopwatch.__version__)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    words, module_args = _split_module_run(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(words)
    args.prog = parser.prog
    if module_args is not None:
        args.argv = module_args
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "report":
            return _report(args)
        if args.command == "attach":
            from loopwatch.attach import command as attach_command

            return attach_command(args)
        from loopwatch.demo import main as demo_main

        return demo_main()
    except _UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return USAGE_ERROR


def _report(args: argparse.Namespace) -> int:
    from loopwatch.console import print_report

    path = args.path
    _check_outputs(args)
    try:
        report = Report.load(path)
    except FileNotFoundError:
        raise _UsageError(f"no such report file: {path}")
    except (ValueError, KeyError, TypeError) as error:
        raise _UsageError(f"{path} is not a loopwatch JSON report ({error})")
    print_report(report, file=sys.stdout)
    _write_outputs(report, args)
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    for path in (getattr(args, "json", None), args.speedscope, args.collapsed, args.html):
        if path:
            _check_writable(path)


def _write_outputs(report: Report, args: argparse.Namespace) -> None:
    """Write every file asked for; one that fails does not stop the others."""
    from loopwatch.export import write_collapsed, write_speedscope
    from loopwatch.html_report import write_html

    writers = [
        (getattr(args, "json", None), report.save),
        (args.speedscope, lambda path: write_speedscope(report, path)),
        (args.collapsed, lambda path: write_collapsed(report, path)),
        (args.html, lambda path: write_html(report, path)),
    ]
    failed = []
    for path, write in writers:
        if not path:
            continue
        try:
            write(path)
        except OSError as error:
            failed.append(f"cannot write {path}: {error.strerror or error}")
    if failed:
        raise _UsageError("; ".join(failed))


def _run(args: argparse.Namespace) -> int:
    from loopwatch.console import print_report

    if args.module is None and not args.argv:
        raise _UsageError("run needs a script (run script.py) or a module (run -m module)")
    options: dict[str, Any] = {"threshold": args.threshold, "deadman": args.deadman,
                               "sample_interval": args.sample_interval, "mode": args.mode,
                               "precise": args.precise, "profile": args.profile,
                               "strict": args.strict,
                               "report_signal": args.report_signal,
                               "report_file": args.report_file,
                               # the worker processes a service starts are watched too
                               "subprocesses": True}
    try:
        session = watch(**options)
    except ConfigError as error:
        raise _UsageError(str(error))

    if args.module is not None:
        target, script_args = args.module, list(args.argv)
        _check_module(target)
    else:
        target, script_args = args.argv[0], list(args.argv[1:])
        if not os.path.isfile(target):
            raise _UsageError(f"script not found: {target}")
        target = os.path.abspath(target)
    _check_outputs(args)

    if args.live and args.mode == "log":
        raise _UsageError("--live and --mode log both write each block to the terminal: "
                          "choose one")
    view: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if args.live:
        from loopwatch.live import LiveView

        view = LiveView(session.report)  # off a terminal it draws nothing
    pid = os.getpid()
    with view:
        status = _execute(session, target, script_args, is_module=args.module is not None)
    if os.getpid() != pid:
        # A forked worker (gunicorn's) returning through the program's main: its
        # findings went to this process's parent, which reports for everyone.
        return status
    report = session.report()
    if not args.quiet:
        print_report(report, file=sys.stderr)
    try:
        _write_outputs(report, args)
    except _UsageError as error:
        print(f"{args.prog}: error: {error}", file=sys.stderr)
        return status or 1
    blocked = report.blocks or report.dropped_blocks or report.calls
    if args.fail_on_block and blocked and status != INTERRUPTED:
        return BLOCKED
    return status


def _check_module(name: str) -> None:
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise _UsageError(f"no module named {name!r}")


def _check_writable(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _UsageError(f"cannot write {path}: folder {folder} does not exist")


def _execute(session: Session, target: str, script_args: list[str], *, is_module: bool) -> int:
    """Run the target as __main__ under the session; return its exit status."""
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    sys.argv = [target, *script_args]
    if not is_module:
        sys.path.insert(0, os.path.dirname(target))
    status = 0
    try:
        with session:
            if is_module:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    except KeyboardInterrupt:
        # Ctrl-C: what was found so far is the point; the program's traceback is not
        print(f"\n{os.path.basename(target)}: interrupted", file=sys.stderr)
        status = INTERRUPTED
    except BaseException:
        # The script's own failure: show it as Python would, then report anyway.
        traceback.print_exc()
        status = 1
    finally:
        sys.argv = saved_argv
        if not is_module and sys.path and saved_path0 is not None:
            sys.path.remove(os.path.dirname(target))
    return status


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
