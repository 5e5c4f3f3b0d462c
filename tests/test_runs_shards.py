"""runs/shards.py: a dataset written in numbered shards, each whole or absent, by runs that must have the same
fingerprint; merged into one dataset. Tiny in-memory datasets, no generator."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, load_from_disk

from dearkd_hf.runs.lock import LOCK_FILE
from dearkd_hf.runs.shards import FINGERPRINT_FILE, SHARDS_DIR, ShardWriter, shard_name

FINGERPRINT = {"method": "deepinversion", "seed": 0, "sizes": (16, 16), "teacher_weights_sha256": "ab"}


def shard(index: int, size: int = 3) -> Dataset:
    return Dataset.from_dict({"value": [10 * index + i for i in range(size)]})


def test_shards_are_written_whole_and_merged(tmp_path):
    writer = ShardWriter(str(tmp_path / "out"), FINGERPRINT)
    writer.check_fingerprint()  # a new folder
    writer.prepare()
    shards = tmp_path / "out" / SHARDS_DIR
    assert json.loads((shards / FINGERPRINT_FILE).read_text()) == {**FINGERPRINT, "sizes": [16, 16]}
    assert shard_name(12) == "batch-000012" and writer.shard_path(12) == str(shards / "batch-000012")

    assert not writer.is_written(0)
    writer.write(0, shard(0), extra_files={"losses.json": {"total": 1.5}})
    writer.write(1, shard(1))
    assert writer.is_written(0) and writer.is_written(1) and not writer.is_written(2)
    assert json.loads((shards / "batch-000000" / "losses.json").read_text()) == {"total": 1.5}
    assert sorted(path.name for path in shards.iterdir()) == ["batch-000000", "batch-000001", FINGERPRINT_FILE]

    merged = writer.merge(num_images=5, num_batches=2)
    assert merged["value"] == [0, 1, 2, 10, 11]
    assert load_from_disk(str(tmp_path / "out"))["value"] == [0, 1, 2, 10, 11]
    assert writer.merge(num_images=6, num_batches=2)["value"] == [0, 1, 2, 10, 11, 12]  # merged again, replaced

    with pytest.raises(RuntimeError, match=r"1 shard\(s\) missing in .* \(first: 2\); re-run with the same arguments"):
        writer.merge(num_images=7, num_batches=3)


def test_a_second_write_of_a_shard_keeps_one_copy(tmp_path):
    writer = ShardWriter(str(tmp_path), FINGERPRINT)
    writer.prepare()
    writer.write(0, shard(0))
    writer.write(0, shard(5))  # another process wrote this (deterministic) batch first
    assert load_from_disk(writer.shard_path(0))["value"] == [0, 1, 2]
    assert sorted(path.name for path in (tmp_path / SHARDS_DIR).iterdir()) == ["batch-000000", FINGERPRINT_FILE]


def test_prepare_drops_half_written_shards_and_keeps_the_fingerprint(tmp_path):
    writer = ShardWriter(str(tmp_path), FINGERPRINT)
    writer.prepare()
    writer.write(0, shard(0))
    (tmp_path / SHARDS_DIR / ".tmp-000001-killed").mkdir()  # what a kill during a shard write leaves
    (tmp_path / ".tmp-merged-killed").mkdir()  # and during the merge
    fingerprint = (tmp_path / SHARDS_DIR / FINGERPRINT_FILE).read_text()
    ShardWriter(str(tmp_path), {**FINGERPRINT, "seed": 0}).prepare()
    assert sorted(path.name for path in (tmp_path / SHARDS_DIR).iterdir()) == ["batch-000000", FINGERPRINT_FILE]
    assert not (tmp_path / ".tmp-merged-killed").exists()
    assert (tmp_path / SHARDS_DIR / FINGERPRINT_FILE).read_text() == fingerprint


def test_a_folder_of_another_configuration_or_of_something_else_is_refused(tmp_path):
    ShardWriter(str(tmp_path / "out"), FINGERPRINT).prepare()
    ShardWriter(str(tmp_path / "out"), dict(FINGERPRINT)).check_fingerprint()  # the same: resumed
    with pytest.raises(
        ValueError,
        match=r"holds a generation run with a different configuration \(seed: 0 there, 1 now, sizes: \[16, 16\] "
        r"there, \[8, 8\] now\)\. Use another output_dir",
    ):
        ShardWriter(str(tmp_path / "out"), {**FINGERPRINT, "seed": 1, "sizes": (8, 8)}).check_fingerprint()
    with pytest.raises(ValueError, match=r"holds a teacher cache run with a different configuration \(extra: None"):
        ShardWriter(str(tmp_path / "out"), {**FINGERPRINT, "extra": 1}, kind="teacher cache").check_fingerprint()

    other = tmp_path / "other"
    other.mkdir()
    (other / LOCK_FILE).write_text("{}")  # the run's own lock is not a foreign file
    ShardWriter(str(other), FINGERPRINT).check_fingerprint()
    (other / "notes.txt").write_text("not ours")
    with pytest.raises(ValueError, match=r"output_dir='.*other' is not empty and holds no teacher cache run"):
        ShardWriter(str(other), FINGERPRINT, kind="teacher cache").check_fingerprint()


def test_a_generation_fingerprint_of_an_older_version_is_read_with_its_defaults(tmp_path, caplog):
    """Folders written before the method and the teacher's weights were recorded resume as DeepInversion runs."""
    (tmp_path / SHARDS_DIR).mkdir()
    older = {key: value for key, value in FINGERPRINT.items() if key not in ("method", "teacher_weights_sha256")}
    (tmp_path / SHARDS_DIR / FINGERPRINT_FILE).write_text(json.dumps(older))
    with caplog.at_level("WARNING"):
        ShardWriter(str(tmp_path), FINGERPRINT).check_fingerprint()
    assert "does not record the teacher's weights: a teacher changed in place goes unseen" in caplog.text
    with pytest.raises(ValueError, match=r"method: 'deepinversion' there, 'fast' now"):
        ShardWriter(str(tmp_path), {**FINGERPRINT, "method": "fast"}).check_fingerprint()
    with pytest.raises(ValueError, match=r"teacher_weights_sha256: None there, 'ab' now"):  # other kinds: no defaults
        ShardWriter(str(tmp_path), FINGERPRINT, kind="teacher cache").check_fingerprint()
