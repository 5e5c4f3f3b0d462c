"""A run killed after its last training step but before its final save, re-run: the resumed session trains nothing,
and its results must not report a training loss of 0.0. They report the run's mean loss per step,
rebuilt from the logged windows when those cover every step, and leave it out otherwise."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_dataset, make_resnet_teacher, make_vit
from transformers import ResNetConfig, ResNetForImageClassification

from dearkd_hf import DearKDConfig, DearKDTrainer
from dearkd_hf.base_trainer import RESUMED_KEY, logged_mean_loss

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "hidden_size=16,num_hidden_layers=2,num_attention_heads=2,intermediate_size=32,patch_size=4"


pytestmark = pytest.mark.usefixtures("one_thread")


def kill_before_final_save(output_dir: Path) -> None:
    """What a kill after training but before the final save leaves: the checkpoints and the run record only."""
    for path in output_dir.iterdir():
        if not path.name.startswith("checkpoint-") and path.name != "dearkd_run.json":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_run_py_rerun_after_a_kill_before_the_final_save_reports_the_runs_train_loss(tmp_path):
    spec = importlib.util.spec_from_file_location("resumed_results_run", ROOT / "examples" / "run.py")
    run_script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run_script
    spec.loader.exec_module(run_script)
    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10
    )
    ResNetForImageClassification(config).save_pretrained(teacher)
    out = tmp_path / "out"
    args = [
        "--teacher_model_name_or_path", str(teacher), "--config_overrides", STUDENT, "--image_size", "28",
        "--max_train_samples", "32", "--max_eval_samples", "8", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
        "--report_to", "none", "--output_dir", str(out),
    ]  # fmt: skip
    run_script.main(args)
    reference = json.loads((out / "all_results.json").read_text())["train_loss"]
    assert (out / "checkpoint-4").is_dir()
    kill_before_final_save(out)
    run_script.main(args)
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_loss"] == pytest.approx(reference, rel=1e-6) and results["train_loss"] > 0
    assert (out / "model.safetensors").is_file()
    final = json.loads((out / "trainer_state.json").read_text())["log_history"][-1]
    assert final["train_loss"] == pytest.approx(reference, rel=1e-6)


def trainer(output_dir: Path, **overrides) -> DearKDTrainer:
    values = dict(
        output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=8, save_strategy="steps", save_steps=2,
        logging_steps=1, report_to="none", use_cpu=True, seed=0, distillation_stop_epoch=1.0,
    )  # fmt: skip
    values.update(overrides)
    return DearKDTrainer(
        model=make_vit(),
        teacher_model=make_resnet_teacher(),
        args=DearKDConfig(**values),
        train_dataset=make_dataset(),
    )


def test_a_session_with_nothing_to_train_leaves_out_a_loss_the_logs_do_not_cover(tmp_path):
    """Logged at step 3 only: step 4's loss is in no log, so the run's mean is unknown; not 0.0."""
    reference = trainer(tmp_path, logging_steps=3).train()
    assert reference.metrics["train_loss"] > 0
    resumed = trainer(tmp_path, logging_steps=3)
    output = resumed.train(resume_from_checkpoint=True)
    assert "train_loss" not in output.metrics and output.training_loss is None
    assert "train_loss" not in resumed.state.log_history[-1] and "train_runtime" in resumed.state.log_history[-1]


def test_the_runs_loss_is_rebuilt_only_from_windows_that_cover_every_step():
    lines = [{"loss": 2.0, "learning_rate": 1e-3, "step": 2}, {"loss": 1.0, "learning_rate": 1e-3, "step": 4}]
    assert logged_mean_loss(lines, 4) == pytest.approx(1.5)
    assert logged_mean_loss(lines, 5) is None  # step 5 logged nowhere
    # Resumed at step 3 (a checkpoint between two logs): step 3's loss died with the killed session, and the line at
    # step 4 covers one step, not two.
    resumed = [lines[0], {RESUMED_KEY: 3, "step": 3}, lines[1]]
    assert logged_mean_loss(resumed, 4) is None
    resumed_at_a_log = [lines[0], {RESUMED_KEY: 2, "step": 2}, lines[1]]
    assert logged_mean_loss(resumed_at_a_log, 4) == pytest.approx(1.5)
    # DearKD's line closing stage 1's window at the switch (no learning rate) is part of a later window: not counted.
    switch = [lines[0], {"loss": 9.0, "stage": 1.0, "step": 3}, lines[1]]
    assert logged_mean_loss(switch, 4) == pytest.approx(1.5)


def test_a_resume_marks_its_step_in_the_log_history(tmp_path):
    trainer(tmp_path, max_steps=2, save_steps=1, logging_steps=2).train()
    shutil.rmtree(tmp_path / "checkpoint-2")
    resumed = trainer(tmp_path, max_steps=2, save_steps=1, logging_steps=2)
    output = resumed.train(resume_from_checkpoint=True)
    assert {RESUMED_KEY: 1, "step": 1} in resumed.state.log_history
    assert output.metrics["train_loss"] > 0  # one step trained in the session: the Trainer's own mean of it
