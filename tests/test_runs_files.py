"""runs/files.py: files written whole or not at all (a temporary file renamed into place), JSON read back without
trusting it, and the length check that names a truncated ``.safetensors`` file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dearkd_hf.runs.files import atomic_path, read_json, safetensors_problem, write_json_atomic


def test_atomic_path_replaces_the_file_when_the_block_ends(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    with atomic_path(str(path)) as tmp:
        assert tmp.startswith(f"{path}.") and tmp.endswith(".tmp")
        with open(tmp, "w") as f:
            f.write("new")
        assert path.read_text() == "old"  # untouched until the block ends
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_path_leaves_the_old_file_whole_when_the_block_raises(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(str(path)) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file behind

    with pytest.raises(RuntimeError), atomic_path(str(tmp_path / "new.json")):
        raise RuntimeError("before anything was written")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_json_atomic_and_read_json(tmp_path):
    path = tmp_path / "payload.json"
    write_json_atomic(str(path), {"b": [1, 2], "a": {"c": None}})
    assert read_json(str(path)) == {"b": [1, 2], "a": {"c": None}}
    assert path.read_text() == json.dumps({"b": [1, 2], "a": {"c": None}}, indent=2)  # indented, keys as given
    write_json_atomic(str(path), {"b": 1, "a": 2}, sort_keys=True)
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["payload.json"]

    with pytest.raises(TypeError):  # not JSON: the old file stays whole
        write_json_atomic(str(path), {"a": object()})
    assert read_json(str(path)) == {"a": 2, "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["payload.json"]


def test_read_json_gives_none_for_a_missing_or_broken_file(tmp_path):
    assert read_json(str(tmp_path / "missing.json")) is None
    assert read_json(str(tmp_path)) is None  # a folder
    (tmp_path / "cut.json").write_text('{"global_st')
    assert read_json(str(tmp_path / "cut.json")) is None
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    assert read_json(str(tmp_path / "binary.json")) is None
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_json(str(tmp_path / "list.json")) == [1, 2]  # any JSON value; the callers check its type


def test_safetensors_problem_names_a_truncated_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(4), "b": torch.ones(2)}, path)
    assert safetensors_problem(str(path)) is None
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    assert safetensors_problem(str(path)) == f"is truncated ({len(whole) - 1} of {len(whole)} bytes)"
    path.write_bytes(whole[:12])  # cut inside the header
    assert safetensors_problem(str(path)) == "is truncated"
    path.write_bytes(whole[:5])  # not even the header's length
    assert safetensors_problem(str(path)) == "has no readable header (truncated)"
    path.write_bytes(b"")
    assert safetensors_problem(str(path)) == "has no readable header (truncated)"

    save_file({}, path)  # no tensors: the header alone
    assert safetensors_problem(str(path)) is None
