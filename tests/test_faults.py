"""The fault matrix: `examples/run.py` killed at each moment of a run, then re-run with the same command.

A kill leaves the output folder as it was at that moment: the checkpoints written so far, and possibly one
checkpoint folder still being written (the aligners first, through a temporary file renamed into place; then the
Trainer's weights, optimizer, scheduler and random state, then trainer_state.json). Whatever the moment, the re-run
must resume from the last complete checkpoint, say which folder it skipped and why, and end bit-identical to the
uninterrupted run with the same seed: same weights, same evaluation. The run has 4 steps per epoch, stage 1 until
epoch 1.6 and a checkpoint every 2 steps, so checkpoint-2 and checkpoint-6 are mid-epoch (in stage 1 and stage 2)
and checkpoint-4 an epoch boundary.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_run_script import run_script, tiny_args, write_teacher

SAVED = [
    "aligners.safetensors",
    "model.safetensors",
    "config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
]


def cut(path: Path) -> None:
    """A file the kill interrupted half-way through writing."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def written_up_to(folder: Path, last: str, cut_last: bool) -> None:
    """Keep the files the Trainer writes before `last` (in SAVED order), and `last` itself whole or cut."""
    keep = SAVED[: SAVED.index(last) + 1]
    for path in folder.iterdir():
        if path.name not in keep and path.name != "preprocessor_config.json":
            path.unlink() if path.is_file() else shutil.rmtree(path)
    if cut_last:
        cut(folder / last)


def killed_writing_aligners(folder: Path) -> None:
    """Killed while the aligners were written: only their temporary file, cut, is there."""
    written_up_to(folder, "aligners.safetensors", True)
    (folder / "aligners.safetensors").rename(folder / "aligners.safetensors.partial")


# moment -> (the last complete checkpoint, how the kill left checkpoint-4 (None: not started), why it is skipped)
MOMENTS = {
    "after-checkpoint-2": (2, None, None),
    "after-checkpoint-4": (4, None, None),
    "after-checkpoint-6": (6, None, None),
    "creating-checkpoint-4": (2, lambda f: shutil.rmtree(f) or f.mkdir(), "empty"),
    "writing-aligners-4": (2, killed_writing_aligners, "no aligners.safetensors"),
    "writing-weights-4": (2, lambda f: written_up_to(f, "model.safetensors", True), "no trainer_state.json"),
    "writing-optimizer-4": (2, lambda f: written_up_to(f, "optimizer.pt", True), "no trainer_state.json"),
    "before-state-4": (2, lambda f: written_up_to(f, "rng_state.pth", False), "no trainer_state.json"),
    "writing-state-4": (2, lambda f: written_up_to(f, "trainer_state.json", True), "not valid JSON"),
}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    return write_teacher(tmp_path_factory.mktemp("teacher"), num_labels=10)


def run_args(teacher: str, out: Path) -> list[str]:
    return [*tiny_args(teacher, out, epochs=2), "--save_strategy", "steps", "--save_steps", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, teacher_dir) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    run_script.main(run_args(teacher_dir, out))
    return out


def final_result(out: Path) -> tuple[bytes, dict]:
    results = json.loads((out / "all_results.json").read_text())
    return (out / "model.safetensors").read_bytes(), {k: results[k] for k in ("eval_accuracy", "eval_loss")}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_rerun_after_a_kill_ends_as_the_uninterrupted_run(tmp_path, teacher_dir, uninterrupted, moment, caplog):
    complete, damage, reason = MOMENTS[moment]
    out = tmp_path / "out"
    out.mkdir()
    for step in range(2, complete + 1, 2):
        shutil.copytree(uninterrupted / f"checkpoint-{step}", out / f"checkpoint-{step}")
    if damage is not None:
        partial = out / "checkpoint-4"
        shutil.copytree(uninterrupted / "checkpoint-4", partial)
        damage(partial)

    with caplog.at_level("INFO"):
        run_script.main(run_args(teacher_dir, out))

    assert f"Resuming from {out / f'checkpoint-{complete}'}." in caplog.text
    if reason is not None:
        skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping")]
        assert len(skipped) == 1 and f"{out / 'checkpoint-4'}: " in skipped[0] and reason in skipped[0]
    weights, metrics = final_result(out)
    expected_weights, expected_metrics = final_result(uninterrupted)
    assert metrics == expected_metrics
    assert weights == expected_weights  # bit for bit
