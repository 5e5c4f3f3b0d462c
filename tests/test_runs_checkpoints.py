"""runs/checkpoints.py: which checkpoint-N folder a re-run may resume from, and whether a folder holds a finished
run. Folders are written by hand as a kill leaves them; nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import truncate, write_checkpoint

from dearkd_hf.runs.checkpoints import (
    check_checkpoint_slots,
    checkpoint_folders,
    checkpoint_problem,
    clear_run,
    finished_run,
    holds_weights,
    is_checkpoint_folder,
    last_complete_checkpoint,
)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda f: None, None),
        (lambda f: (f / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda f: (f / "trainer_state.json").write_text('{"global_st'), "trainer_state.json is not valid JSON"),
        (lambda f: (f / "model.safetensors").unlink(), "no model weights"),
        (lambda f: truncate(f / "model.safetensors"), "model.safetensors is truncated"),
        (lambda f: truncate(f / "optimizer.pt"), "optimizer.pt is not a whole torch archive"),
    ],
    ids=["complete", "no-state", "state-cut", "no-weights", "weights-cut", "optimizer-cut"],
)
def test_checkpoint_problem_names_what_is_missing(tmp_path, damage, problem):
    folder = write_checkpoint(tmp_path / "checkpoint-2", 2)
    damage(folder)
    found = checkpoint_problem(str(folder))
    assert found is None if problem is None else problem in found
    assert "aligners.safetensors" in checkpoint_problem(str(folder), required_files=["aligners.safetensors"])


def test_checkpoint_problem_of_a_folder_killed_early_or_not_a_trainers(tmp_path):
    (tmp_path / "empty").mkdir()
    assert checkpoint_problem(str(tmp_path / "empty")) == "it is empty (the run was killed while creating it)"
    assert checkpoint_problem(str(tmp_path / "missing")) == "it is not a folder"
    (tmp_path / "file").write_text("not a folder")
    assert checkpoint_problem(str(tmp_path / "file")) == "it is not a folder"

    folder = write_checkpoint(tmp_path / "checkpoint-2", 2)
    (folder / "trainer_state.json").write_text(json.dumps({"epoch": 1.0}))
    assert checkpoint_problem(str(folder)) == "its trainer_state.json has no global_step (it is not a Trainer's state)"
    (folder / "trainer_state.json").write_text("[2]")
    assert "has no global_step" in checkpoint_problem(str(folder))
    (folder / "trainer_state.json").unlink()
    assert checkpoint_problem(str(folder)) == "it has no trainer_state.json (the run was killed while writing it)"
    # The files this run's checkpoints must hold are checked before the state.
    assert checkpoint_problem(str(folder), ["aligners.safetensors"]) == "it has no aligners.safetensors"


def test_checkpoint_problem_reads_the_safetensors_header(tmp_path):
    folder = write_checkpoint(tmp_path / "checkpoint-2", 2)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])  # the last byte never written
    assert checkpoint_problem(str(folder)).startswith("its model.safetensors is truncated (")


def test_last_complete_checkpoint_skips_partial_ones_newest_first(tmp_path, caplog):
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None
    assert last_complete_checkpoint(str(tmp_path)) is None
    for step in (2, 9):
        write_checkpoint(tmp_path / f"checkpoint-{step}", step)
    truncate(write_checkpoint(tmp_path / "checkpoint-10", 10) / "model.safetensors")  # 10 > 9: numbers, not names
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-final").mkdir()  # not a checkpoint-N folder: never looked at
    with caplog.at_level("WARNING"):
        assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-9")
    skipped = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Skipping")]
    assert len(skipped) == 2
    assert skipped[0].startswith(f"Skipping {tmp_path / 'checkpoint-12'}: it is empty")
    assert skipped[1].startswith(f"Skipping {tmp_path / 'checkpoint-10'}: its model.safetensors is truncated")
    assert all(message.endswith("looking for an older complete checkpoint.") for message in skipped)

    caplog.clear()
    with caplog.at_level("WARNING"):
        assert last_complete_checkpoint(str(tmp_path), ["aligners.safetensors"]) is None  # none of them has it
    assert len([record for record in caplog.records if record.getMessage().startswith("Skipping")]) == 4


def test_checkpoint_folders_and_their_names(tmp_path):
    for name in ("checkpoint-3", "checkpoint-20", "checkpoint-100", "checkpoint-x", "run-5"):
        (tmp_path / name).mkdir()
    names = [Path(path).name for path in checkpoint_folders(str(tmp_path))]
    assert names == ["checkpoint-100", "checkpoint-20", "checkpoint-3"]
    assert checkpoint_folders(str(tmp_path / "missing")) == []
    assert is_checkpoint_folder(str(tmp_path / "checkpoint-3")) and is_checkpoint_folder("out/checkpoint-3/")
    assert not is_checkpoint_folder(str(tmp_path)) and not is_checkpoint_folder("out/checkpoint-x")


def test_a_file_in_a_checkpoint_slot_is_refused(tmp_path):
    check_checkpoint_slots(str(tmp_path / "missing"))
    (tmp_path / "checkpoint-2").mkdir()
    check_checkpoint_slots(str(tmp_path))
    (tmp_path / "checkpoint-6").write_text("not a checkpoint")
    with pytest.raises(NotADirectoryError, match=r"--out .*: checkpoint-6 is a file, not a checkpoint folder"):
        check_checkpoint_slots(str(tmp_path), flag="--out")


def write_final_model(folder, step: int, max_steps: int) -> None:
    """What a run saves in its output folder when training ends: the model and trainer_state.json."""
    write_checkpoint(folder, step)
    state = json.loads((folder / "trainer_state.json").read_text())
    (folder / "trainer_state.json").write_text(json.dumps({**state, "max_steps": max_steps}))
    (folder / "optimizer.pt").unlink()


def test_finished_run_needs_the_final_model_and_the_last_step(tmp_path):
    out = tmp_path / "out"
    assert finished_run(str(out)) is None
    write_final_model(out, 8, 8)
    assert finished_run(str(out)) == (8, 8)

    (out / "trainer_state.json").write_text(json.dumps({"global_step": 6, "max_steps": 8}))
    assert finished_run(str(out)) is None  # the state of a run that stopped early
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 8, "max_steps": 0}))
    assert finished_run(str(out)) is None
    (out / "trainer_state.json").write_text('{"global_step": 8, "max_st')
    assert finished_run(str(out)) is None

    killed = tmp_path / "killed"  # killed after its last checkpoint, before the final save: not finished
    killed.mkdir()
    write_checkpoint(killed / "checkpoint-8", 8)
    (killed / "trainer_state.json").write_text(json.dumps({"global_step": 8, "max_steps": 8}))
    assert not holds_weights(str(killed)) and finished_run(str(killed)) is None


def test_holds_weights_knows_every_weights_layout(tmp_path):
    assert not holds_weights(str(tmp_path / "missing")) and not holds_weights(str(tmp_path))
    for name in ("model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors", "global_step8"):
        folder = tmp_path / "weights" / name
        folder.mkdir(parents=True)
        if name.startswith("global_step"):  # a DeepSpeed checkpoint's folder
            (folder / name).mkdir()
        else:
            (folder / name).write_text("")
        assert holds_weights(str(folder)), name
    (tmp_path / "config.json").write_text("{}")
    assert not holds_weights(str(tmp_path))


def test_clear_run_deletes_the_run_and_keeps_the_rest(tmp_path):
    out = tmp_path / "out"
    write_final_model(out, 4, 4)
    for step in (2, 4):
        write_checkpoint(out / f"checkpoint-{step}", step)
    (out / "dearkd_run.json").write_text("{}")
    (out / "notes.txt").write_text("the user's")
    deleted = clear_run(str(out), extra_files=["dearkd_run.json"])
    assert deleted == ["checkpoint-4", "checkpoint-2", "dearkd_run.json", "model.safetensors", "trainer_state.json"]
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
    assert clear_run(str(tmp_path / "missing")) == []
