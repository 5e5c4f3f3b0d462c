"""runs/lock.py: one run per output folder (``dearkd.lock``) and the write check made before any work. Lock files
of other runs are written by hand; the only other processes are a sleeping one and one that has exited."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
from helpers import write_lock

from dearkd_hf.runs.lock import LOCK_FILE, OutputFolderLock, check_writable_folder, output_folder_lock


def test_a_second_holder_is_refused_naming_the_first(tmp_path, sleeper):
    write_lock(tmp_path, sleeper.pid, socket.gethostname())
    before = (tmp_path / LOCK_FILE).read_text()
    with pytest.raises(
        BlockingIOError,
        match=rf"--out {re.escape(str(tmp_path))} is in use by another run \(pid {sleeper.pid} on "
        rf"{re.escape(socket.gethostname())}, since 2026-01-01T00:00:00\+00:00: \?\); wait for it to end or choose "
        rf"another --out\. If that run is gone, delete {re.escape(str(tmp_path / LOCK_FILE))}\.",
    ):
        OutputFolderLock(tmp_path, flag="--out").acquire()
    assert (tmp_path / LOCK_FILE).read_text() == before  # the holder's lock is left as it was


def test_a_lock_of_another_host_or_of_this_process_is_not_taken_over(tmp_path):
    write_lock(tmp_path, os.getpid(), "another-host")
    with pytest.raises(BlockingIOError, match="another-host"):
        OutputFolderLock(tmp_path).acquire()
    write_lock(tmp_path, os.getpid(), socket.gethostname())  # ours, but not taken through OutputFolderLock
    with pytest.raises(BlockingIOError, match=f"pid {os.getpid()}"):
        OutputFolderLock(tmp_path).acquire()


def test_a_stale_lock_is_taken_over_and_released(tmp_path, capsys):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # dead, reaped: its pid is free
    write_lock(tmp_path, process.pid, socket.gethostname())
    with OutputFolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with OutputFolderLock(tmp_path):  # the trainer inside the script: taken again, not refused
            pass
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()
    assert f"taking over the lock of a run that is no longer alive (pid {process.pid}" in capsys.readouterr().err


def test_the_lock_is_reentrant_and_the_last_release_removes_it(tmp_path):
    out = tmp_path / "new" / "out"
    lock = OutputFolderLock(out)
    with lock:
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert set(holder) == {"pid", "host", "since", "command"}
        with OutputFolderLock(out), OutputFolderLock(str(out) + "/"):  # the same folder, however it is written
            pass
        assert json.loads((out / LOCK_FILE).read_text()) == holder
    assert not out.exists()  # created by the lock and still empty: removed with it
    assert (tmp_path / "new").is_dir()

    with OutputFolderLock(out):
        (out / "model.safetensors").write_text("")
    assert sorted(path.name for path in out.iterdir()) == ["model.safetensors"]  # a folder with a result stays

    (tmp_path / "empty").mkdir()
    with OutputFolderLock(tmp_path / "empty"):
        pass
    assert (tmp_path / "empty").is_dir()  # it was there before the lock


def test_an_unreadable_lock_file_is_refused_not_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text('{"pid": 12')  # cut while written, or not ours
    with pytest.raises(BlockingIOError, match=r"its lock file .*dearkd\.lock is unreadable; if no run uses this fold"):
        OutputFolderLock(tmp_path).acquire()
    assert (tmp_path / LOCK_FILE).read_text() == '{"pid": 12'


def test_output_folder_lock_is_a_no_op_when_not_enabled(tmp_path):
    with output_folder_lock(str(tmp_path / "out"), enabled=False):
        assert not (tmp_path / "out").exists()
    with output_folder_lock(str(tmp_path / "out")):
        assert (tmp_path / "out" / LOCK_FILE).is_file()


def test_check_writable_folder_fails_before_any_work(tmp_path):
    check_writable_folder(str(tmp_path / "not" / "yet"))
    assert sorted(tmp_path.iterdir()) == []  # the probe is removed and nothing is created

    (tmp_path / "file").write_text("a file where a folder is expected")
    file = re.escape(str(tmp_path / "file"))
    with pytest.raises(NotADirectoryError, match=rf"--out {file}/x: {file} is a file, not a folder; choose another"):
        check_writable_folder(str(tmp_path / "file" / "x"), flag="--out")
    with pytest.raises(PermissionError, match=r"--output_dir /sys/dearkd_out: cannot write to /sys \("):
        check_writable_folder("/sys/dearkd_out")  # read-only for every user, root included
