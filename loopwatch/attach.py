"""``loopwatch attach PID``: watch a running Python 3.14+ process for a while.

The process needs no preparation: it never imported loopwatch, it only has to
be able to (loopwatch importable from its ``sys.path``). PEP 768's
:func:`sys.remote_exec` has it run a small script; the script starts the watch
in a thread of its own, and the report comes back through files.

The control channel
-------------------
The attaching process makes a private folder (``mkdtemp``, mode 0700, given to
the process's user when root attaches to another user's process) in the
process's ``/tmp``, reached through ``/proc/PID/root`` on Linux when the
process sees another ``/tmp`` than ours (a container, systemd's
``PrivateTmp``). In it:

``start.py``
    The script, with the folder and the options written in. The process runs
    it in its main thread at its next bytecode boundary, which is often in the
    middle of an iteration of the event loop it runs there, so the script does
    next to nothing: it starts a thread, ``loopwatch-attach``, and returns.
    That thread imports loopwatch and starts a session (which finds running
    loops from the threads' stacks), then writes ``ready.json``; or
    ``error.json`` when loopwatch cannot be imported or started. Importing
    loopwatch there, not in the main thread, keeps the loop from blocking on
    it (it takes a tenth of a second on a cold cache).
``control``
    A FIFO. The attaching process holds it open for writing from the start;
    the thread waits reading it. ``stop`` ends the watch: the thread stops
    the session, writes ``report.json`` then ``done.json`` (each written
    whole, then renamed in place) and ends. End of file, when the attaching
    process is gone (killed, or interrupted twice), ends the watch too, and
    then the thread removes the folder itself. Nothing polls in the process;
    the stop does not wait for the main thread, which may be blocked right
    then; and no process id is compared, so PID namespaces do not matter.
``cancelled``
    Written by an attaching process that gave up waiting for ``ready.json``:
    a main thread stuck in a C call runs the script when the call returns,
    maybe much later. The script then does nothing but remove the folder.

A second ``remote_exec`` to stop the watch would be simpler, but it would wait
for the main thread again, and nothing would stop the session of an attaching
process that was killed.

If the process exits while watched, an ``atexit`` handler (removed when the
watch ends) writes the report first. When the watch ends nothing of it is left
in the process: the session's patches and its watchdog thread go, the
``loopwatch-attach`` thread ends, the handler is removed; ``done.json`` lists
anything of loopwatch's still there, and the attaching process waits for the
threads it was told of to leave ``/proc/PID/task``. Only loopwatch's modules
stay imported (Python cannot unload them), with the fork handlers they
register, which do nothing without a session.

The options that apply are the detection settings (``threshold``,
``sample_interval``, ``site_threshold``, ``include``, ``exclude``,
``max_blocks``), resolved here as ``run`` resolves them (argument, then
``LOOPWATCH_*``, then ``pyproject.toml``); in the process, blocks are not
logged and strict mode, profiling, deadman, precise mode and worker processes
are off: each leaves something behind or costs the process more.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import posixpath
import re
import select
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from loopwatch.config import Config, ConfigError
from loopwatch.model import Report

#: Bumped when the files or the script change: both sides must speak the same.
PROTOCOL = 1

#: How long the process waits for the loops it found to be attached before it says
#: which are watched (seconds).
_LOOPS_WAIT = 0.5

#: With --live, how often the process writes the report so far (seconds).
LIVE_EVERY = 0.5

#: Seconds to wait for the process to run the script, by default.
READY_TIMEOUT = 10.0
#: Seconds to wait for the report once told to stop.
STOP_TIMEOUT = 30.0
#: Seconds to wait for the process's loopwatch threads to end after the report.
_THREADS_TIMEOUT = 5.0
_POLL = 0.05

#: The Config fields an attach passes on to the process; the rest keep their defaults.
PASSED = ("threshold", "sample_interval", "site_threshold", "include", "exclude", "max_blocks")

_SCRIPT = '''\
# loopwatch attach (from process {attacher}): run here by sys.remote_exec (PEP 768).
# It starts a thread that watches this process's event loops until told to stop.
def _loopwatch_attach(folder, options):
    import json, os, shutil, sys, threading

    def write(name, data):
        path = os.path.join(folder, name)
        with open(path + ".tmp", "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(path + ".tmp", path)

    def cancelled():
        if os.path.exists(os.path.join(folder, "cancelled")):
            shutil.rmtree(folder, ignore_errors=True)  # the attaching process gave up
            return True
        return False

    def serve():
        try:
            try:
                import loopwatch.attach
            except ImportError as error:
                try:
                    import loopwatch
                    version = str(loopwatch.__version__)
                except Exception:
                    version = None
                write("error.json", {{
                    "kind": "import", "error": str(error), "loopwatch": version,
                    "python": sys.version.split()[0], "executable": sys.executable,
                }})
                return
            loopwatch.attach._serve(folder, options)
        except Exception as error:
            write("error.json", {{"kind": "start", "error": repr(error)}})
        finally:
            cancelled()

    try:
        options = json.loads(options)
        if not cancelled():
            threading.Thread(target=serve, name="loopwatch-attach", daemon=True).start()
    except Exception as error:
        write("error.json", {{"kind": "start", "error": repr(error)}})

try:
    _loopwatch_attach({folder!r}, {options!r})
except Exception:
    pass  # nothing may reach this process's stderr
'''


class AttachError(Exception):
    """loopwatch could not attach to the process, or lost it; the message is one line."""


def attach(
    pid: int,
    *,
    duration: float | None = None,
    threshold: float | None = None,
    sample_interval: float | None = None,
    timeout: float = READY_TIMEOUT,
    stop: threading.Event | None = None,
    say: Callable[[str], None] | None = None,
    view: Callable[[Callable[[], Report | None]], AbstractContextManager[object]] | None = None,
) -> Report:
    """Watch the event loops of the running Python 3.14+ process ``pid``; return the report.

    The watch lasts ``duration`` seconds, until ``stop`` is set, or until
    Ctrl-C (KeyboardInterrupt) when neither comes first; it ends early, with
    what was found, if the process exits. ``timeout``: seconds the process has
    to start the watch. ``say`` hears one-line news (attached, detached).
    Raises :class:`AttachError` when it cannot attach; KeyboardInterrupt
    before the watch started. ``view``: entered while watching with a function
    that returns the report so far (the process writes it every half second),
    e.g. :class:`loopwatch.live.LiveView`.
    """
    remote_exec = _remote_exec()
    options = _options(threshold=threshold, sample_interval=sample_interval)
    options["live"] = view is not None
    if duration is not None and not duration > 0:
        raise AttachError(f"the duration must be more than 0 seconds, got {duration:g}")
    _check_process(pid)
    channel = _Channel.create(pid)
    try:
        channel.inject(remote_exec, options)
        ready = channel.wait_ready(timeout)
    except BaseException:
        channel.abandon()
        raise
    try:
        if say is not None:
            say(_attached_line(pid, ready, duration))
        started = time.monotonic()
        with view(channel.latest) if view is not None else nullcontext():
            exited = channel.watch(duration, stop)
        report, done = channel.finish(STOP_TIMEOUT)
        if say is not None:
            if exited or done.get("exited"):
                say(f"process {pid} exited after {time.monotonic() - started:.1f} s")
            left = list(done.get("leftovers", ())) + channel.threads_left(ready)
            if left:
                say(f"warning: left running in process {pid}: {', '.join(left)}")
            elif not done.get("exited"):
                say(f"detached from process {pid}: nothing of loopwatch's runs in it")
        return report
    finally:
        channel.close()


def _attached_line(pid: int, ready: dict[str, Any], duration: float | None) -> str:
    loops = list(ready.get("loops", ()))
    if loops:
        found = f"{len(loops)} event loop{'s' if len(loops) > 1 else ''}: {', '.join(loops)}"
    else:
        found = "no event loop running yet (loops it starts are watched)"
    how_long = f"for {duration:g} s" if duration is not None else "until Ctrl-C"
    return (f"attached to process {pid} (Python {ready.get('python')}, loopwatch "
            f"{ready.get('loopwatch')}), {found}; watching {how_long}")


# -- checks before attaching --------------------------------------------------------------


def _remote_exec() -> Callable[[int, str], None]:
    remote_exec: Callable[[int, str], None] | None = getattr(sys, "remote_exec", None)
    if remote_exec is None:
        major, minor = sys.version_info[:2]
        raise AttachError(
            f"loopwatch attach needs Python 3.14 or newer (this is {major}.{minor})"
        )
    if os.name != "posix":
        raise AttachError("loopwatch attach works on Linux and macOS")
    return remote_exec


def _options(**given: Any) -> dict[str, Any]:
    """The settings the process is to use, resolved and checked here."""
    try:
        config = Config.resolve(**{k: v for k, v in given.items() if v is not None})
    except ConfigError as error:
        raise AttachError(str(error))
    passed = {name: getattr(config, name) for name in PASSED}
    for name in ("include", "exclude"):
        passed[name] = list(passed[name])
    return {"protocol": PROTOCOL, "config": passed}


def _check_process(pid: int) -> None:
    if pid <= 0:
        raise AttachError(f"not a process id: {pid}")
    if pid == os.getpid():
        raise AttachError(f"process {pid} is this loopwatch itself")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise AttachError(f"no such process: {pid}")
    except PermissionError:
        pass  # another user's: remote_exec says whether we may
    if _state(pid) == "Z":
        raise AttachError(f"process {pid} has exited (a zombie waiting for its parent)")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return _state(pid) not in ("Z", "X")


def _state(pid: int) -> str | None:
    """The process's state letter on Linux (``Z``: a zombie), else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _not_permitted(pid: int) -> AttachError:
    owner = ""
    try:
        import pwd

        uid = os.stat(f"/proc/{pid}").st_uid
        owner = f" (user {pwd.getpwuid(uid).pw_name})"
    except (OSError, KeyError, ImportError):
        pass
    hint = "run loopwatch attach as root, or as the process's user"
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", encoding="utf-8") as scope:
            value = scope.read().strip()
        if value != "0":
            hint += f" with ptrace allowed (/proc/sys/kernel/yama/ptrace_scope is {value})"
    except OSError:
        pass
    return AttachError(f"not permitted to attach to process {pid}{owner}: {hint}")


def _python_of(pid: int) -> tuple[str | None, tuple[int, int] | None]:
    """The process's executable and, when its name or libpython tells, its Python version."""
    try:
        exe: str | None = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
    names = [os.path.basename(exe)] if exe else []
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            names += [line.rsplit("/", 1)[-1].strip() for line in maps if "libpython" in line]
    except OSError:
        pass
    for name in names:
        match = re.match(r"(?:lib)?python(\d+)\.(\d+)", name)
        if match:
            return exe, (int(match[1]), int(match[2]))
    return exe, None


def _explain(pid: int, error: BaseException) -> AttachError:
    """What ``sys.remote_exec``'s exception means, in one line."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, PermissionError) for e in chain):
        return _not_permitted(pid)
    if not _exists(pid):
        return AttachError(f"process {pid} exited")
    here = sys.version_info[:2]
    match = re.search(r"to a Python (\d+)\.(\d+) process", text)
    if match:
        theirs = (int(match[1]), int(match[2]))
        if theirs < (3, 14):
            return AttachError(f"process {pid} runs Python {theirs[0]}.{theirs[1]}: "
                               "loopwatch attach needs Python 3.14 or newer there too")
        return AttachError(
            f"process {pid} runs Python {theirs[0]}.{theirs[1]} and this is "
            f"{here[0]}.{here[1]}: attach with the same version "
            f"(python{theirs[0]}.{theirs[1]} -m loopwatch attach {pid})"
        )
    if "not enabled in the remote process" in text:
        return AttachError(
            f"remote debugging is disabled in process {pid} (it was started with "
            "-X disable-remote-debug or PYTHON_DISABLE_REMOTE_DEBUG set)"
        )
    if "PyRuntime" in text:
        exe, version = _python_of(pid)
        named = f" ({exe})" if exe else ""
        if version is not None and version < (3, 14):
            return AttachError(f"process {pid}{named} runs Python {version[0]}.{version[1]}: "
                               "loopwatch attach needs Python 3.14 or newer there too")
        if version is None and not (exe and "python" in os.path.basename(exe).lower()):
            return AttachError(f"process {pid}{named} is not a Python process "
                               "(no Python 3.14+ runtime found in it)")
        return AttachError(f"no Python 3.14+ runtime found in process {pid}{named}: "
                           f"{chain[-1]}")
    return AttachError(f"cannot attach to process {pid}: {error}")


# -- the attaching side of the channel ----------------------------------------------------


class _Channel:
    """The folder shared with the process (see the module docstring)."""

    def __init__(self, pid: int, local: str, remote: str) -> None:
        self.pid = pid
        #: the folder as this process reaches it, and as the target does
        self.local = local
        self.remote = remote
        self._fd: int | None = None
        #: whether the process may still use the folder (a script to run, a watch going)
        self.shared = False

    @classmethod
    def create(cls, pid: int) -> _Channel:
        local_base, remote_base = _temp_bases(pid)
        if local_base == remote_base:
            _sweep(local_base)
        try:
            local = tempfile.mkdtemp(prefix=f"loopwatch-attach-{pid}-", dir=local_base)
        except PermissionError:
            raise _not_permitted(pid)
        except OSError as error:
            raise AttachError(f"cannot make a folder in {remote_base} for process {pid}: "
                              f"{error.strerror or error}")
        channel = cls(pid, local, posixpath.join(remote_base, os.path.basename(local)))
        try:
            fifo = channel.path("control")
            os.mkfifo(fifo, 0o600)
            # Read and write: opening does not wait for a reader, and the process's
            # reads see end of file only once this process is gone.
            channel._fd = os.open(fifo, os.O_RDWR)
        except BaseException:
            channel.close()
            raise
        return channel

    def path(self, name: str) -> str:
        return os.path.join(self.local, name)

    def inject(self, remote_exec: Callable[[int, str], None], options: dict[str, Any]) -> None:
        script = self.path("start.py")
        with open(script, "w", encoding="utf-8") as out:
            out.write(_SCRIPT.format(attacher=os.getpid(), folder=self.remote,
                                     options=json.dumps(options)))
        _give_away(self.pid, [self.local, script, self.path("control")])
        # sys.remote_exec checks that the script exists here, where the process may
        # see another /tmp: then a copy stands in for it at the same path meanwhile.
        mirror = None
        try:
            if self.local != self.remote:
                try:
                    os.mkdir(self.remote, 0o700)
                except OSError as error:
                    raise AttachError(f"cannot make {self.remote}: {error.strerror or error}")
                mirror = self.remote
                shutil.copyfile(script, posixpath.join(mirror, "start.py"))
            remote_exec(self.pid, posixpath.join(self.remote, "start.py"))
        except AttachError:
            raise
        except Exception as error:
            raise _explain(self.pid, error)
        finally:
            if mirror is not None:
                shutil.rmtree(mirror, ignore_errors=True)
        self.shared = True

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self.path(name), encoding="utf-8") as src:
                data = json.load(src)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise AttachError(f"cannot read {name} from process {self.pid}: {error}")
        if not isinstance(data, dict):
            raise AttachError(f"cannot read {name} from process {self.pid}: not an object")
        return data

    def latest(self) -> Report | None:
        """The report so far, as the process last wrote it (with --live), or None."""
        try:
            return Report.load(self.path("live.json"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            ready = self._read("ready.json")
            if ready is not None:
                return ready
            error = self._read("error.json")
            if error is not None:
                raise self._failed(error)
            if not _exists(self.pid):
                self.shared = False
                raise AttachError(f"process {self.pid} exited before the watch started")
            if time.monotonic() >= deadline:
                raise AttachError(
                    f"process {self.pid} did not run loopwatch's start script within "
                    f"{timeout:g} s: its main thread is held by a C call or a sleep, or an "
                    "idle event loop waits for its next event (try --timeout); the script "
                    "does nothing if it runs later"
                )
            time.sleep(_POLL)

    def _failed(self, error: dict[str, Any]) -> AttachError:
        self.shared = False  # the thread has ended
        message = error.get("error")
        if error.get("kind") != "import":
            return AttachError(f"loopwatch could not start in process {self.pid}: {message}")
        where = f"Python {error.get('python')} at {error.get('executable')}"
        if error.get("loopwatch"):
            return AttachError(
                f"process {self.pid} has loopwatch {error.get('loopwatch')}, without attach "
                f"({message}; {where}): install this loopwatch there"
            )
        return AttachError(f"process {self.pid} cannot import loopwatch ({message}; "
                           f"{where}): install loopwatch in its environment")

    def watch(self, duration: float | None, stop: threading.Event | None) -> bool:
        """Wait out the watch; True if the process exited meanwhile."""
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while True:
                if self._read("done.json") is not None:
                    return True  # it exited: its atexit handler wrote the report
                if not _exists(self.pid):
                    return True
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    return False
                if stop is not None:
                    if stop.wait(left):
                        return False
                else:
                    time.sleep(left)
        except KeyboardInterrupt:
            return False  # Ctrl-C ends the watch: what was found is the point

    def finish(self, timeout: float) -> tuple[Report, dict[str, Any]]:
        """Stop the watch; the report and what the process said of its ending."""
        if self._fd is not None:
            try:
                os.write(self._fd, b"stop\n")
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while (done := self._read("done.json")) is None:
            if not _exists(self.pid):
                self.shared = False
                raise AttachError(f"process {self.pid} exited before it wrote the report")
            if time.monotonic() >= deadline:
                raise AttachError(f"process {self.pid} did not write the report within "
                                  f"{timeout:g} s")
            time.sleep(_POLL)
        self.shared = False  # the thread wrote its last file
        try:
            report = Report.load(self.path("report.json"))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AttachError(f"cannot read the report of process {self.pid}: {error}")
        return report, done

    def threads_left(self, ready: dict[str, Any]) -> list[str]:
        """loopwatch's threads still in the process after the wait (Linux); their names."""
        tids = [int(tid) for tid in ready.get("threads", ())]
        deadline = time.monotonic() + _THREADS_TIMEOUT
        while True:
            left = [t for t in tids if os.path.exists(f"/proc/{self.pid}/task/{t}")]
            if not left or time.monotonic() >= deadline or not _exists(self.pid):
                break
            time.sleep(_POLL)
        return [f"thread {tid}" for tid in left] if _exists(self.pid) else []

    def abandon(self) -> None:
        """Give up before the watch started (an error, a timeout, Ctrl-C)."""
        if self.shared and _exists(self.pid):
            # The script may run yet: it will see this and remove the folder. A
            # watch it started meanwhile sees end of file when we close, and
            # removes the folder too.
            try:
                with open(self.path("cancelled"), "w"):
                    pass
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        """Close our end; remove the folder unless the process may still use it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self.shared or not _exists(self.pid):
            shutil.rmtree(self.local, ignore_errors=True)


def _temp_bases(pid: int) -> tuple[str, str]:
    """Where to make the folder: as this process reaches it, and as the target does."""
    if not sys.platform.startswith("linux"):
        base = tempfile.gettempdir()
        return base, base
    theirs = f"/proc/{pid}/root/tmp"
    try:
        same = os.path.samestat(os.stat(theirs), os.stat("/tmp"))
    except PermissionError:
        raise _not_permitted(pid)
    except FileNotFoundError:
        if not _exists(pid):
            raise AttachError(f"no such process: {pid}")
        raise AttachError(f"process {pid} has no /tmp to share a folder with")
    return ("/tmp" if same else theirs), "/tmp"


def _sweep(base: str) -> None:
    """Remove the folders that attaches which gave up left for processes gone since."""
    try:
        names = [n for n in os.listdir(base) if n.startswith("loopwatch-attach-")]
    except OSError:
        return
    for name in names:
        folder = os.path.join(base, name)
        pid = name.split("-")[2]
        try:
            mine = os.geteuid() in (0, os.stat(folder).st_uid)
            cancelled = os.path.exists(os.path.join(folder, "cancelled"))
            if mine and cancelled and pid.isdigit() and not _exists(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def _give_away(pid: int, paths: list[str]) -> None:
    """Root attaching to another user's process: that user must read and write the folder."""
    if os.geteuid() != 0:
        return
    try:
        owner = os.stat(f"/proc/{pid}")
    except OSError:
        return
    if owner.st_uid == 0:
        return
    for path in paths:
        os.chown(path, owner.st_uid, owner.st_gid)


# -- the process's side (run in its loopwatch-attach thread) ------------------------------


def _write_json(folder: str, name: str, data: Any) -> None:
    path = os.path.join(folder, name)
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        json.dump(data, out)
    os.replace(path + ".tmp", path)


def _ours() -> dict[str, str]:
    """loopwatch's threads, import hooks and gc callbacks in this process, by identity."""
    found = {
        f"thread:{t.ident}": f"thread {t.name}"
        for t in threading.enumerate()
        if t.name.startswith("loopwatch") and t is not threading.current_thread()
    }
    for finder in sys.meta_path:
        if type(finder).__module__.startswith("loopwatch"):
            found[f"finder:{id(finder)}"] = f"import hook {type(finder).__name__}"
    for callback in gc.callbacks:
        if str(getattr(callback, "__module__", "")).startswith("loopwatch"):
            found[f"gc:{id(callback)}"] = "gc callback"
    return found


def _serve(folder: str, options: dict[str, Any]) -> None:
    """Watch until told to stop through ``control``; see the module docstring."""
    control = os.open(os.path.join(folder, "control"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.set_blocking(control, True)
        if options.get("protocol") != PROTOCOL:
            raise RuntimeError(
                f"this loopwatch speaks attach protocol {PROTOCOL}, the attaching one "
                f"{options.get('protocol')}: use the same loopwatch version on both sides"
            )
        _Watch(folder, options["config"], live=bool(options.get("live"))).serve(control)
    finally:
        os.close(control)


class _Watch:
    def __init__(self, folder: str, settings: dict[str, Any], live: bool = False) -> None:
        from loopwatch.session import Session

        self.folder = folder
        #: --live: the report so far, written to live.json every LIVE_EVERY seconds
        self.live = live
        self.pid = os.getpid()
        self.before = _ours()
        for name in ("include", "exclude"):
            settings[name] = tuple(settings.get(name, ()))
        self.session = Session(Config(**settings), log_blocks=False)
        self._lock = threading.Lock()
        self._ended = False

    def serve(self, control: int) -> None:
        import loopwatch

        self.session.start()
        atexit.register(self._at_exit)
        try:
            threads = [threading.get_native_id()] + [
                thread.native_id for thread in threading.enumerate()
                if thread.name.startswith("loopwatch") and thread.native_id is not None
                and f"thread:{thread.ident}" not in self.before
                and thread is not threading.current_thread()
            ]
            _write_json(self.folder, "ready.json", {
                "python": sys.version.split()[0],
                "loopwatch": str(loopwatch.__version__),
                "loops": self._loops_found(),
                "threads": threads,
            })
            told = self._wait(control, self._write_live if self.live else None)
        except BaseException:
            self._end(gone=True)
            raise
        self._end(gone=not told)

    def _loops_found(self) -> list[str]:
        """The loops being watched. A loop running in another thread (uvloop's, found
        from its stack) is attached from its own thread, at its next iteration: give
        that a moment, or a busy uvicorn reads as "no event loop running yet"."""
        deadline = time.monotonic() + _LOOPS_WAIT
        while not (loops := self.session.running_loops()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return [stats.loop for stats in loops]

    @staticmethod
    def _wait(control: int, every: Callable[[], None] | None = None) -> bool:
        """Until told to stop (True) or the attaching process is gone (False); ``every``
        LIVE_EVERY seconds meanwhile."""
        while True:
            if every is not None:
                ready, _, _ = select.select([control], [], [], LIVE_EVERY)
                if not ready:
                    every()
                    continue
            try:
                data = os.read(control, 64)
            except InterruptedError:
                continue
            except OSError:
                return False
            if not data:
                return False
            if b"stop" in data:
                return True

    def _write_live(self) -> None:
        self.session.report().save(os.path.join(self.folder, "live.json"))

    def _at_exit(self) -> None:
        if os.getpid() == self.pid:  # not in a forked child that inherited the handler
            self._end(gone=False, exiting=True)

    def _end(self, gone: bool, exiting: bool = False) -> None:
        if not self._lock.acquire(timeout=STOP_TIMEOUT):
            return
        try:
            if self._ended:
                return
            self._ended = True
            atexit.unregister(self._at_exit)
            self.session.stop()
            if gone:
                shutil.rmtree(self.folder, ignore_errors=True)
                return
            report = self.session.report()
            report.save(os.path.join(self.folder, "report.json"))
            _write_json(self.folder, "done.json",
                        {"exited": exiting, "leftovers": self._leftovers()})
        finally:
            self._lock.release()

    def _leftovers(self) -> list[str]:
        deadline = time.monotonic() + _THREADS_TIMEOUT
        for thread in threading.enumerate():
            if (thread.name.startswith("loopwatch") and thread is not threading.current_thread()
                    and f"thread:{thread.ident}" not in self.before):
                thread.join(max(0.0, deadline - time.monotonic()))
        now = _ours()
        return sorted(what for key, what in now.items() if key not in self.before)


# -- the command line ----------------------------------------------------------------------


def command(args: argparse.Namespace) -> int:
    """``loopwatch attach PID``: the cli's ``attach`` subcommand."""
    from loopwatch.cli import INTERRUPTED, _check_outputs, _UsageError, _write_outputs
    from loopwatch.console import print_report

    _check_outputs(args)

    def say(line: str) -> None:
        print(f"loopwatch: {line}", file=sys.stderr, flush=True)

    try:
        view = None
        if args.live:
            from loopwatch.live import LiveView

            view = LiveView
        report = attach(args.pid, duration=args.duration, threshold=args.threshold,
                        timeout=args.timeout, say=say, view=view)
    except AttachError as error:
        raise _UsageError(str(error))
    except KeyboardInterrupt:
        print(f"\n{args.prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    print_report(report, file=sys.stderr)
    _write_outputs(report, args)
    return 0
