"""Run a long job as a child process: JSON-line progress on stdout, log lines, cancel of the whole tree.

Protocol: the child prints one JSON object per line for events, e.g.
``{"event": "progress", "progress": 0.42, "message": "DDIM step 21/50"}`` (:func:`emit_progress`
writes them); any other stdout or stderr line is a log line. On failure the child exits non-zero
and its last stderr line (``error: ...`` from the CLI) becomes the error message.

Reader threads only fill a queue; messages reach callbacks in the caller's thread through
:meth:`ChildProcess.poll` or :meth:`ChildProcess.wait`, so a GUI timer can drain them safely.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..utils.jsonfile import dumps


class ProcessFailed(RuntimeError):
    """The child exited with a non-zero code; the message is its last stderr line.

    ``returncode``: the child's (2: it refused its input); ``detail``: that line without the ``error:`` prefix."""

    def __init__(self, message: str, returncode: int | None = None, detail: str = ""):
        super().__init__(message)
        self.returncode, self.detail = returncode, detail or message


@dataclass
class Message:
    kind: str  # "progress" (or another event name from a JSON line), "log" or "stderr"
    text: str
    data: dict = field(default_factory=dict)

    @property
    def progress(self) -> float | None:
        value = self.data.get("progress")
        return None if value is None else float(value)


def parse_line(line: str, stream: str = "stdout") -> Message:
    """A JSON object with an ``event`` (or ``progress``) key is an event; anything else a log line."""
    text = line.rstrip("\r\n")
    if stream == "stdout" and text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and ("event" in data or "progress" in data):
            kind = str(data.get("event", "progress"))
            return Message(kind, str(data.get("message", "")), data)
    return Message("log" if stream == "stdout" else "stderr", text)


def emit_progress(progress: float, message: str = "", file=None, **extra) -> None:
    """Child side of the protocol: print one progress event line and flush."""
    record = {"event": "progress", "progress": round(float(progress), 4), "message": message, **extra}
    print(dumps(record, "progress line"), file=file or sys.stdout, flush=True)


def popen_options() -> dict:
    """POSIX: the child leads its own process group (cancel reaches grandchildren). Windows: its own process group
    and no console window (Slicer has no console: a console child such as PythonSlicer.exe would open one for the
    whole run, as ``slicer.util.launchConsoleProcess`` avoids too)."""
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}


class ChildProcess:
    """A started child process whose output is read in background threads."""

    def __init__(
        self, command: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None,
        name: str = "job", tail_lines: int = 30,
    ):  # fmt: skip
        self.command = [str(c) for c in command]
        self.name = name
        self.cancelled = False
        self._queue: queue.Queue[Message] = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=tail_lines)
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        # read below as UTF-8: a Python child would write its pipes in the ANSI code page on Windows (cp1252: a
        # node or folder name outside it, e.g. Greek or CJK, would end the child with UnicodeEncodeError)
        child_env["PYTHONIOENCODING"] = "utf-8:backslashreplace"
        child_env.setdefault("PYTHONUTF8", "1")  # and its open()/read_text() default to UTF-8 there too
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=child_env, cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **popen_options(),
        )  # fmt: skip
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe, stream: str) -> None:
        for line in pipe:
            message = parse_line(line, stream)
            if stream == "stderr" and message.text.strip():
                self._stderr_tail.append(message.text)
            self._queue.put(message)
        pipe.close()

    # ---- state ----------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def finished(self) -> bool:
        """Exited and all its output read."""
        return self.process.poll() is not None and not any(r.is_alive() for r in self._readers)

    @property
    def stderr_tail(self) -> list[str]:
        return list(self._stderr_tail)

    def error_message(self) -> str:
        code = self.process.poll()
        detail = f": {self._last_error()}" if self._last_error() else " (no error output)"
        return f"{self.name} failed with exit code {code}{detail}"

    def _last_error(self) -> str:
        last = self._stderr_tail[-1].strip() if self._stderr_tail else ""
        return last[len("error: ") :] if last.startswith("error: ") else last

    def check(self) -> None:
        """Raise :class:`ProcessFailed` if the child exited non-zero (not when cancelled)."""
        code = self.process.poll()
        if code not in (0, None) and not self.cancelled:
            raise ProcessFailed(self.error_message(), code, self._last_error())

    # ---- messages -------------------------------------------------------------------------------
    def poll(self, callback: Callable[[Message], None] | None = None) -> list[Message]:
        """Messages received since the last call (never blocks)."""
        messages = []
        while True:
            try:
                messages.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if callback:
            for message in messages:
                callback(message)
        return messages

    def wait(self, timeout: float | None = None, callback: Callable[[Message], None] | None = None) -> int | None:
        """Block until the child exits (or ``timeout`` s pass), passing messages to ``callback``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            if deadline is not None and time.monotonic() > deadline:
                return None
            try:
                message = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if callback:
                callback(message)
        self.poll(callback)
        return self.process.returncode

    # ---- cancel ---------------------------------------------------------------------------------
    def cancel(self, grace: float = 3.0) -> None:
        """Stop the child and everything it started: terminate, then kill after ``grace`` s."""
        if self.process.poll() is not None:
            return
        self.cancelled = True
        kill_tree(self.process.pid, grace, self.process)
        self.process.wait()
        for reader in self._readers:
            reader.join(timeout=2.0)


def kill_tree(pid: int, grace: float = 3.0, popen: subprocess.Popen | None = None) -> None:
    """Terminate ``pid`` and all its descendants (psutil if present, else its process group).

    ``popen`` (the ``Popen`` of ``pid``, if ours) is reaped while waiting: a zombie leader would
    otherwise keep its process group alive until the grace period ends.
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            processes = parent.children(recursive=True) + [parent]
        except psutil.NoSuchProcess:
            return
        for process in processes:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=grace)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        return
    if os.name == "posix":
        # the child leads its own process group (start_new_session): signal the whole group
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if popen is not None:
                popen.poll()
            if not _group_alive(pid):
                return
            time.sleep(0.05)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False, **popen_options())


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
