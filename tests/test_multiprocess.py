"""DearKD under `accelerate launch` with two CPU processes (gloo): training crosses the stage switch in sync.

`accelerate launch --cpu --num_processes 2` starts a single process (accelerate's simple launcher only fans out
through mpirun), so the launch goes through torchrun with `--multi_gpu`; the script's `use_cpu=True` then gives
accelerate's MULTI_CPU mode with the gloo backend, on machines with or without GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import ROOT, STUDENT, failure_report, free_port, launch_distributed_training, write_teacher


def test_two_cpu_processes_train_across_the_stage_switch_in_sync(tmp_path):
    result = launch_distributed_training(tmp_path)
    assert result.returncode == 0, failure_report(result)
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]

    for i, rank in enumerate(ranks):
        assert rank["process_index"] == i and rank["num_processes"] == 2
        assert rank["distributed_type"] == "DistributedType.MULTI_CPU"
        # 32 examples / (2 processes x batch 4) = 4 steps per epoch; stage 2 from epoch 1 on
        assert rank["stages"] == [1.0] * 4 + [2.0] * 4
        assert rank["teacher_released"]

    first, second = ranks
    # Each rank built its own aligners; DDP starts both from rank 0's and keeps them equal.
    assert any(not torch.equal(first["initial_aligners"][k], second["initial_aligners"][k]) for k in first["aligners"])
    assert first["aligners"].keys() == second["aligners"].keys() and first["aligners"]
    for key in first["aligners"]:
        assert torch.equal(first["aligners"][key], second["aligners"][key]), key
        assert not torch.equal(first["aligners"][key], first["initial_aligners"][key]), key  # they trained

    assert first["student"].keys() == second["student"].keys()
    assert not [k for k in first["student"] if "aligner" in k]  # detached after training
    for key in first["student"]:
        assert torch.equal(first["student"][key], second["student"][key]), key


def test_processes_that_do_not_form_one_group_are_refused(tmp_path):
    """torchrun with two CPU processes but without --use_cpu true: each process would train alone into the same
    output_dir; run.py refuses both, in one line, before training."""
    teacher = write_teacher(tmp_path / "teacher", num_labels=10)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", str(free_port()),
        str(ROOT / "examples" / "run.py"), "--teacher_model_name_or_path", teacher, "--config_overrides", STUDENT,
        "--image_size", "28", "--max_train_samples", "16", "--max_eval_samples", "8", "--report_to", "none",
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    # Each process refuses; torchrun may stop the second before it prints, once the first has failed.
    assert "2 processes were launched (WORLD_SIZE=2) but this one trains in a group of 1" in result.stderr
    assert "--use_cpu true" in result.stderr and not (tmp_path / "out" / "model.safetensors").exists()
    # One line each, before the output folder's lock: no traceback from the script (torchrun prints its own for the
    # failed children), no lock error blaming "another run".
    assert 'examples/run.py", line' not in result.stderr and "another run" not in result.stderr, result.stderr[-3000:]
