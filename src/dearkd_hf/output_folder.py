"""The output folder of a run: checked writable before any expensive work."""

from __future__ import annotations

import os
import tempfile


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
