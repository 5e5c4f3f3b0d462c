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

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from helpers import (
    EMBEDDED,
    STUDENT,
    inversion_config,
    make_config,
    make_dataset,
    make_resnet_teacher,
    make_vit,
    run_script,
    tiny_args,
    tiny_teacher,
    truncate,
    write_lock,
    write_teacher,
)
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from dearkd_hf.inversion import DeepInversionGenerator, write_dataset
from dearkd_hf.runs import seeded_batches
from dearkd_hf.runs.lock import LOCK_FILE
from dearkd_hf.runs.record import RUN_FILE
from dearkd_hf.trainer import DearKDTrainer

SAVED = [
    "aligners.safetensors",
    "model.safetensors",
    "config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
]


def written_up_to(folder: Path, last: str, cut_last: bool) -> None:
    """Keep the files the Trainer writes before `last` (in SAVED order), and `last` itself whole or cut."""
    keep = SAVED[: SAVED.index(last) + 1]
    for path in folder.iterdir():
        if path.name not in keep and path.name != "preprocessor_config.json":
            path.unlink() if path.is_file() else shutil.rmtree(path)
    if cut_last:
        truncate(folder / last)


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
    "empty-state-4": (2, lambda f: (f / "trainer_state.json").write_text("{}"), "trainer_state.json has no global_s"),
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


# ---- what a re-run assumes about its output folder ----


def copy_run(source: Path, out: Path, finished: bool = False) -> None:
    """The checkpoints and run record of `source` (a run killed after its last checkpoint), or all of it."""
    if finished:
        shutil.copytree(source, out)
        return
    out.mkdir()
    for path in source.iterdir():
        if path.name.startswith("checkpoint-") or path.name == RUN_FILE:
            (shutil.copytree if path.is_dir() else shutil.copy)(path, out / path.name)


def test_a_second_run_in_a_folder_in_use_is_refused(tmp_path, teacher_dir, sleeper):
    out = tmp_path / "out"
    write_lock(out, sleeper.pid, socket.gethostname())
    with pytest.raises(BlockingIOError, match=rf"in use by another run \(pid {sleeper.pid} on .*since 2026-01-01"):
        run_script.main(run_args(teacher_dir, out))
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written, the other run's lock kept


def test_the_trainer_holds_the_lock_while_training(tmp_path, teacher_dir, monkeypatch):
    held = []
    real_step = DearKDTrainer.training_step

    def spy_step(self, *args, **kwargs):
        held.append(json.loads((Path(self.args.output_dir) / LOCK_FILE).read_text())["pid"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(DearKDTrainer, "training_step", spy_step)
    out = tmp_path / "out"
    run_script.main([*tiny_args(teacher_dir, out, epochs=1), "--max_steps", "1", "--save_strategy", "no"])
    assert held == [os.getpid()] and not (out / LOCK_FILE).exists()


CHANGED = {
    "beta": (["--beta", "0"], r"distillation\.beta \(1\.0 there, 0\.0 now\)"),
    "alpha-beta": (["--alpha", "0.9", "--beta", "0.25"], r"2 differ: distillation\.alpha .*distillation\.beta"),
    "epochs": (["--num_train_epochs", "4"], r"schedule\.num_train_epochs \(2\.0 there, 4\.0 now\)"),
    "hidden-size": (["--config_overrides", STUDENT.replace("hidden_size=32", "hidden_size=64")], r"model\.hidden_si"),
    "data": (["--train_fraction", "0.5"], r"data\.train_fraction \(1\.0 there, 0\.5 now\)"),
}


@pytest.mark.parametrize("change", list(CHANGED))
@pytest.mark.parametrize("finished", [False, True], ids=["killed", "finished"])
def test_a_rerun_with_other_settings_is_refused(tmp_path, teacher_dir, uninterrupted, change, finished):
    """D2/S1: another run's checkpoints are neither skipped and overwritten nor resumed; the fields are listed."""
    out = tmp_path / "out"
    copy_run(uninterrupted, out, finished)
    before = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")}
    extra, differs = CHANGED[change]
    with pytest.raises(ValueError, match=rf"holds a run made with other settings \(.*{differs}.*Re-run with"):
        run_script.main([*run_args(teacher_dir, out), *extra])
    assert {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_teacher_retrained_in_place_is_another_run(tmp_path, teacher_dir, uninterrupted):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    weights = load_file(teacher / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, teacher / "model.safetensors")
    out = tmp_path / "out"
    copy_run(uninterrupted, out)
    with pytest.raises(ValueError, match=r"teacher\.weights_sha256 \("):
        run_script.main(run_args(str(teacher), out))


def test_a_finished_run_is_reported_not_resumed(tmp_path, teacher_dir, uninterrupted):
    out = tmp_path / "out"
    copy_run(uninterrupted, out, finished=True)
    with pytest.raises(ValueError, match=r"holds a finished run \(step 8 of 8\): nothing to resume. To train again"):
        run_script.main(run_args(teacher_dir, out))


def test_a_finished_run_saved_taking_rgb_is_reported_not_refused(tmp_path, teacher_dir):
    """A grayscale ViT is saved taking RGB (dearkd_hf.models.grayscale) at its only save: the run's record still
    describes the model that trained, so running again into the folder says it is finished, not that it is another
    run."""
    out = tmp_path / "out"
    args = [*tiny_args(teacher_dir, out, epochs=1), "--model_type", "vit", "--save_strategy", "no"]
    run_script.main(args)
    assert json.loads((out / "config.json").read_text())["num_channels"] == 3
    with pytest.raises(ValueError, match=r"holds a finished run"):
        run_script.main(args)


def test_weights_that_are_not_finite_are_never_saved(tmp_path, teacher_dir):
    """S2: a learning rate that sends the weights to inf at step 1 stops the run before checkpoint-1 is written."""
    out = tmp_path / "out"
    args = [*run_args(teacher_dir, out), "--learning_rate", "1e38", "--save_steps", "1"]
    with pytest.raises(FloatingPointError, match=r"Training step 1: the model's weights are not finite .*No finite"):
        run_script.main(args)
    assert not (out / "checkpoint-1").exists() and not (out / "model.safetensors").exists()


class PoisonAt(TrainerCallback):
    """Sets one weight to inf at the end of step `step` (after its optimizer step, before its checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")


def test_a_non_finite_model_stops_the_run_naming_the_last_finite_checkpoint(tmp_path):
    args = make_config(
        tmp_path, max_steps=4, per_device_train_batch_size=8, save_strategy="steps", save_steps=1,
        dataloader_num_workers=0,
    )  # fmt: skip
    trainer = DearKDTrainer(
        make_vit(), make_resnet_teacher(), args, train_dataset=make_dataset(), callbacks=[PoisonAt(2)]
    )
    with pytest.raises(
        FloatingPointError, match=rf"Training step 2: .*The last finite checkpoint is {tmp_path}/checkp"
    ):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    with pytest.raises(FloatingPointError, match="Training step 2: the model's weights are not finite"):
        trainer.save_model()


def test_generation_refuses_a_teacher_retrained_in_place(tmp_path):
    """S4: same teacher source, other weights: the shards of the first teacher are not mixed with the second's."""
    write_dataset(DeepInversionGenerator(tiny_teacher(seed=0), inversion_config()), str(tmp_path), 6, progress=False)
    retrained = tiny_teacher(seed=1)
    assert retrained.source == tiny_teacher(seed=0).source
    with pytest.raises(ValueError, match=r"different configuration \(teacher_weights_sha256: '[0-9a-f]{64}' there"):
        write_dataset(DeepInversionGenerator(retrained, inversion_config()), str(tmp_path), 12, progress=False)


@pytest.fixture(scope="module")
def unlabelled_dataset(tmp_path_factory) -> str:
    """The embedded subset with one training example marked unlabelled (-1, as `datasets` does)."""
    embedded = load_from_disk(str(EMBEDDED))
    train = embedded["train"].select(range(64))
    labels = [-1, *train["label"][1:]]
    train = Dataset.from_dict({"image": train["image"], "label": labels}, features=train.features)
    folder = tmp_path_factory.mktemp("unlabelled") / "data"
    DatasetDict({"train": train, "test": embedded["test"].select(range(32))}).save_to_disk(folder)
    return str(folder)


def truncated_copy(folder: str, into: Path) -> str:
    shutil.copytree(folder, into)
    truncate(into / "model.safetensors")
    return str(into)


# Bad input that used to crash deep inside training: each now one line naming the flag or file, before training.
CRASHES = {
    "epochs-0": (["--num_train_epochs", "0"], ValueError, r"num_train_epochs=0.0 trains nothing"),
    "epochs-negative": (["--num_train_epochs", "-1"], ValueError, r"num_train_epochs=-1.0 trains nothing"),
    "lr-negative": (["--learning_rate", "-1"], ValueError, r"learning_rate=-1.0 must be > 0"),
    "lr-zero": (["--learning_rate", "0"], ValueError, r"learning_rate=0.0 must be > 0"),
    "grad-norm-negative": (["--max_grad_norm", "-1"], ValueError, r"max_grad_norm=-1.0 must be >= 0"),
    "image-size-0": (["--image_size", "0"], ValueError, r"--image_size must be >= 1"),
    "label-minus-1": (
        ["--dataset_name", "UNLABELLED"],
        ValueError,
        r"train split has labels \[-1\] outside \[0, 10\)",
    ),
    "truncated-teacher": (
        ["--teacher_model_name_or_path", "CUT_TEACHER"],
        ValueError,
        r"--teacher_model_name_or_path .*teacher_cut: its model.safetensors is truncated",
    ),
    "truncated-student": (
        ["--model_name_or_path", "CUT_STUDENT", "--config_overrides", None],
        ValueError,
        r"--model_name_or_path .*student_cut: its model.safetensors is truncated",
    ),
    "file-as-checkpoint": (
        ["CHECKPOINT_FILE"],
        NotADirectoryError,
        r"checkpoint-6 is a file, not a checkpoint folder",
    ),
}


@pytest.mark.parametrize("crash", list(CRASHES))
def test_bad_input_of_the_audit_fails_with_one_line_before_training(
    tmp_path, teacher_dir, uninterrupted, unlabelled_dataset, crash, monkeypatch
):
    extra, error, message = CRASHES[crash]
    out = tmp_path / "out"
    replace = {
        "UNLABELLED": unlabelled_dataset,
        "CUT_TEACHER": lambda: truncated_copy(teacher_dir, tmp_path / "teacher_cut"),
        "CUT_STUDENT": lambda: truncated_copy(str(uninterrupted), tmp_path / "student_cut"),
    }
    args = run_args(teacher_dir, out)
    for flag, value in zip(extra[::2], extra[1::2], strict=False):
        index = args.index(flag) if flag in args else None
        if value is None:  # the flag removed
            del args[index : index + 2]
            continue
        value = replace.get(value, value)
        value = value() if callable(value) else value
        if index is None:
            args += [flag, value]
        else:
            args[index + 1] = value
    if extra == ["CHECKPOINT_FILE"]:
        out.mkdir()
        (out / "checkpoint-6").write_text("not a checkpoint")
    steps = []
    monkeypatch.setattr(DearKDTrainer, "training_step", lambda *a, **k: steps.append(1))
    with pytest.raises(error, match=message):
        run_script.main(args)
    assert not steps


def test_persistent_loader_workers_resume_mid_epoch_bit_identically(tmp_path, teacher_dir):
    """Workers kept alive across epochs see each new epoch (the batch's augmentation seed holds it), so a re-run
    after a kill in the middle of the second epoch ends as the uninterrupted run."""
    workers = ["--dataloader_num_workers", "2", "--dataloader_persistent_workers", "True"]
    whole = tmp_path / "whole"
    run_script.main([*run_args(teacher_dir, whole), *workers])

    resumed = tmp_path / "resumed"
    copy_run(whole, resumed)
    shutil.rmtree(resumed / "checkpoint-8")  # killed after checkpoint-6, mid-epoch
    run_script.main([*run_args(teacher_dir, resumed), *workers])
    assert final_result(resumed) == final_result(whole)


def test_batches_are_seeded_with_the_epoch_they_belong_to(tmp_path, monkeypatch):
    """The epoch in a batch's augmentation seed is the training's (the trainer replaces its state object when
    training starts or resumes), and a resumed run seeds the rest of its epoch as the uninterrupted one did."""
    seeded = []
    real_sha256 = seeded_batches.hashlib.sha256

    def spy(data=b"", *args, **kwargs):
        if data.startswith(b"(0, "):  # repr((seed, epoch, indices)) of the batches, seed 0
            seed, epoch, indices = ast.literal_eval(data.decode())
            seeded.append((epoch, tuple(indices)))
        return real_sha256(data, *args, **kwargs)

    monkeypatch.setattr(seeded_batches.hashlib, "sha256", spy)

    def trainer(**overrides) -> DearKDTrainer:
        args = make_config(
            tmp_path, num_train_epochs=2, per_device_train_batch_size=8, save_strategy="steps", save_steps=6,
            dataloader_num_workers=0, seed=0, **overrides,
        )  # fmt: skip
        return DearKDTrainer(make_vit(), make_resnet_teacher(), args, train_dataset=make_dataset())

    trainer().train()
    whole = list(seeded)
    assert [epoch for epoch, _ in whole] == [0] * 4 + [1] * 4  # 32 examples, batches of 8
    seeded.clear()
    trainer().train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert seeded == whole[6:]


def test_the_trainer_itself_refuses_another_runs_folder(tmp_path):
    """trainer.train() checks the folder too: checkpoints, or a saved model alone, of a run with other settings."""

    def trainer(folder: Path, **overrides) -> DearKDTrainer:
        args = make_config(folder, max_steps=2, per_device_train_batch_size=8, dataloader_num_workers=0, **overrides)
        return DearKDTrainer(make_vit(), make_resnet_teacher(), args, train_dataset=make_dataset())

    trainer(tmp_path / "checkpoints", save_strategy="steps", save_steps=1).train()
    saved = trainer(tmp_path / "model", save_strategy="no")
    saved.train()
    saved.save_model()
    for folder in ("checkpoints", "model"):
        with pytest.raises(ValueError, match=r"other settings \(1 differ: distillation\.alpha \(0\.5 there, 0\.9 now"):
            trainer(tmp_path / folder, alpha=0.9, save_strategy="no").train()


def test_overwrite_output_dir_deletes_the_other_run_and_trains_afresh(tmp_path, teacher_dir, uninterrupted, caplog):
    out = tmp_path / "out"
    copy_run(uninterrupted, out, finished=True)
    with pytest.raises(ValueError, match=r"finished run .*new --output_dir \(or --overwrite_output_dir to start"):
        run_script.main(run_args(teacher_dir, out))
    with caplog.at_level("WARNING"):
        run_script.main([*run_args(teacher_dir, out), "--beta", "0", "--max_steps", "4", "--overwrite_output_dir"])
    assert "overwrite_output_dir: deleted the run in" in caplog.text and "Resuming" not in caplog.text
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # 6 and 8 deleted
    assert json.loads((out / RUN_FILE).read_text())["distillation"]["beta"] == 0.0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_two_runs_into_one_folder(tmp_path, teacher_dir, capfd):
    """D1 end to end: while a run trains, a second one into its folder is refused naming it; once the first is
    killed, its lock is taken over."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(
        [sys.executable, run_script.__file__, *run_args(teacher_dir, out), "--num_train_epochs", "500"],
        env={**env, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if (out / LOCK_FILE).exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        with pytest.raises(BlockingIOError, match=rf"in use by another run \(pid {first.pid} on .*run\.py"):
            run_script.main(run_args(teacher_dir, out))
    finally:
        first.kill()
        first.wait()
    run_script.main([*run_args(teacher_dir, out), "--overwrite_output_dir"])
    assert f"taking over the lock of a run that is no longer alive (pid {first.pid}" in capfd.readouterr().err
    assert (out / "model.safetensors").is_file() and not (out / LOCK_FILE).exists()
