"""The output folder's lock and write check: one run at a time per folder, and a folder known writable before any
expensive work.

- :func:`check_writable_folder`: a probe file, before any data or model is loaded.
- :class:`OutputFolderLock`: ``dearkd.lock`` (pid, host, since, command), created exclusively before anything else
  is written; a second run is refused naming the first, and a lock left by a dead process on this host is taken over.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Mapping
from typing import Any

from .files import read_json

LOCK_FILE = "dearkd.lock"
# The lock files this process holds, with how many times each was taken (a script and its trainer both take it).
_HELD: dict[str, int] = {}


def check_writable_folder(path: str, flag: str = "--output_dir") -> None:
    """Fail now, not after training, when ``path`` cannot be created or written to.

    Writes (and removes) a probe file in the nearest existing folder rather than reading permission bits, which
    the root user bypasses: a read-only file system or a path under a regular file fails for every user.
    """
    target = os.path.abspath(os.path.expanduser(os.fspath(path)))
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{flag} {path}: {existing} is a file, not a folder; choose another {flag}.")
    try:
        handle, probe = tempfile.mkstemp(prefix=".dearkd-write-probe-", dir=existing)
    except OSError as error:
        raise PermissionError(
            f"{flag} {path}: cannot write to {existing} ({error.strerror}); choose a folder you can write to."
        ) from None
    os.close(handle)
    os.remove(probe)


class OutputFolderLock:
    """An exclusive claim on an output folder: the file ``dearkd.lock`` in it, created with ``O_EXCL``.

    ``acquire()`` creates the folder if needed and the lock file holding this process's pid, host, start time and
    command; when the file exists and names a live process (or one on another host, which cannot be checked), it
    raises ``BlockingIOError`` naming that run. A lock whose pid is dead on this host (a killed run) is taken over.
    The same process may take it again (a script, then its trainer): ``release()`` removes the file at the last
    release, and the folder too if this lock created it and it is still empty (a run refused before writing).
    """

    def __init__(self, folder: str, flag: str = "--output_dir"):
        self.folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        self.path = os.path.join(self.folder, LOCK_FILE)
        self.flag = flag
        self._created_folder = False

    def __enter__(self) -> OutputFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def acquire(self) -> None:
        if _HELD.get(self.path):
            _HELD[self.path] += 1
            return
        self._created_folder = not os.path.isdir(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv else "",
        }
        for _ in range(5):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_json(self.path)
                if holder is None and not os.path.exists(self.path):
                    continue  # released meanwhile
                if holder is not None and _is_stale(holder):
                    self._take_over(holder)
                    continue
                self._refuse(holder)
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                json.dump(record, f)
            _HELD[self.path] = 1
            return
        self._refuse(read_json(self.path))

    def _take_over(self, stale: dict) -> None:
        """Move the stale lock aside (one process wins the rename) and drop it; put back a lock that is not the
        stale one (another process took over first)."""
        aside = f"{self.path}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if read_json(aside) != stale:
            with contextlib.suppress(OSError):
                os.rename(aside, self.path)
            return
        os.remove(aside)
        print(
            f"{self.flag} {self.folder}: taking over the lock of a run that is no longer alive "
            f"(pid {stale.get('pid')} on {stale.get('host')}, since {stale.get('since')}).",
            file=sys.stderr,
        )

    def _refuse(self, holder: dict | None) -> None:
        if holder is None:
            raise BlockingIOError(
                f"{self.flag} {self.folder}: its lock file {self.path} is unreadable; if no run uses this folder, "
                "delete that file and re-run."
            )
        raise BlockingIOError(
            f"{self.flag} {self.folder} is in use by another run (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('since')}: {holder.get('command', '?')}); wait for it to "
            f"end or choose another {self.flag}. If that run is gone, delete {self.path}."
        )

    def release(self) -> None:
        count = _HELD.get(self.path, 0)
        if count > 1:
            _HELD[self.path] = count - 1
            return
        _HELD.pop(self.path, None)
        if count and (read_json(self.path) or {}).get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        if self._created_folder:
            with contextlib.suppress(OSError):
                os.rmdir(self.folder)  # only if still empty


def output_folder_lock(folder: str, flag: str = "--output_dir", enabled: bool = True):
    """:class:`OutputFolderLock` as a context manager; a no-op when not ``enabled`` (a process that does not
    write, e.g. every process but the main one)."""
    return OutputFolderLock(folder, flag) if enabled else contextlib.nullcontext()


def _is_stale(holder: Mapping[str, Any]) -> bool:
    """A lock of a process that is dead on this host (another host's processes cannot be checked)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    if pid == os.getpid():
        return False  # ours, but not taken through this process's OutputFolderLock: treat as held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False
