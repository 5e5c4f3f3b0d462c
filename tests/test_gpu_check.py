"""tools/gpu_check.sh without a GPU: its dry run, its summary, and the speed preset it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import speed as speed_module
from tools import gpu_summary

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"


def test_gpu_check_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_records_each_part_and_holds_no_machine_paths(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.startswith("versions: {")  # the first line names the versions

    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["dry_run"] is True and summary["speed_224"] is None
    assert {name: part["exit_status"] for name, part in summary["parts"].items()} == {
        "tests": 0,
        "speed": 0,
        "profile": 0,
        "teacher_cache": 0,
    }
    assert summary["teacher_cache_224"] is None and not (tmp_path / "teacher_cache_224.json").exists()
    expected = {
        "test_bf16_stage1_loss_matches_fp32_on_a_batch",
        "test_switch_returns_the_teachers_cuda_memory",
        "test_torch_compile_trains_through_both_stages_or_says_why",
        "test_two_gpus_train_across_the_stage_switch_in_sync",
    }
    assert set(summary["tests"]) == expected
    if not torch.cuda.is_available():
        assert all(outcome.startswith("skipped") for outcome in summary["tests"].values())
    # The preset resolved its CUDA settings without running.
    settings = json.loads((tmp_path / "speed.log").read_text())
    assert settings["batch_size"] == 128 and settings["bf16"] is True and settings["image_size"] == 224
    assert not (tmp_path / "speed_224.json").exists()
    for path in tmp_path.iterdir():
        text = path.read_text()
        assert str(ROOT) not in text and str(tmp_path) not in text, path.name


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--device", "cpu"], dict(batch_size=16, bf16=False, repeats=6, image_size=224, num_channels=3)),
        (["--device", "cuda"], dict(batch_size=128, bf16=True, repeats=30, patch_size=16, teacher="resnet50")),
        (["--device", "cpu", "--batch_size", "4", "--teacher", "resnet18"], dict(batch_size=4, teacher="resnet18")),
        (["--device", "cuda", "--no-bf16"], dict(bf16=False, batch_size=128)),
    ],
)
def test_speed_preset_sets_the_users_scale_and_explicit_flags_win(argv, expected):
    args = speed_module.parse_args(["--preset", "deit_tiny_224", *argv])
    assert {key: getattr(args, key) for key in expected} == expected
    assert Path(args.output).name == "speed_224.json"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "deit_tiny_224", "--quick"], "exclusive"),
        (["--preset", "nope"], "invalid choice"),
        (["--device", "cpu", "--bf16"], "--bf16 needs --device cuda"),
        (["--num_channels", "2"], "--num_channels 2"),
    ],
)
def test_speed_rejects_inconsistent_flags(argv, message, capsys):
    with pytest.raises(SystemExit):
        speed_module.parse_args(argv)
    assert message in capsys.readouterr().err


def test_speed_records_commands_without_machine_paths():
    speed = speed_module
    command = speed.portable_command(["--output", str(ROOT / "benchmarks/results/x.json"), "--output=/tmp/a/b.json"])
    assert command == ["python -m benchmarks.speed", "--output", "benchmarks/results/x.json", "--output=b.json"]


def test_gpu_summary_tabulates_tests_and_speed_targets(tmp_path):
    summary_module = gpu_summary
    (tmp_path / "parts.tsv").write_text("tests\t1\t30\nspeed\t124\t200\n")
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite><testcase name="test_a"/><testcase name="test_b"><failure message="x"/>'
        '</testcase><testcase name="test_c"><skipped message="needs two CUDA GPUs"/></testcase>'
        "</testsuite></testsuites>"
    )
    (tmp_path / "tests.log").write_text(f"File {ROOT}/src/x.py, /usr/lib/python3/site-packages/torch/a.py\n")
    target = {"max": 1.03, "on": "paired", "value": 1.01, "met": True}
    (tmp_path / "speed_224.json").write_text(
        json.dumps(
            {
                "targets": {"stage1_vs_deit": target},
                "paired_ratios": {"stage1_vs_deit": 1.01},
                "timings": {"plain": {"median_s": 0.05}},
                "peak_memory_bytes": {"plain": 2**30},
                "stage2_switch": {"teacher_weights_freed": True},
                "setup": {
                    "command": "python -m benchmarks.speed --preset deit_tiny_224",
                    "batch_size": 128,
                    "bf16": True,
                    "repeats": 30,
                },
            }
        )
    )
    cache_setup = {"teacher": "regnety_160", "batch_size": 128}
    (tmp_path / "teacher_cache_224.json").write_text(
        json.dumps(
            {
                "cached_vs_plain": 1.02,
                "cached_vs_live": 0.3,
                "live_vs_plain": 3.4,
                "target": {"cached_vs_plain_at_most": 1.05, "on": "paired", "met": True},
                "timings": {"plain": {"median_s": 0.05}, "dearkd_cached": {"median_s": 0.051}},
                "build": {"build_vs_live_forward_per_image": 1.2},
                "setup": cache_setup,
            }
        )
    )
    summary = summary_module.summarise(tmp_path, dry_run=False)
    assert summary["parts"]["speed"] == {"exit_status": 124, "seconds": 200, "timed_out": True}
    assert summary["teacher_cache_224"]["ratios"]["cached_vs_plain"] == 1.02
    assert summary["teacher_cache_224"]["median_step_ms"] == {"plain": 50.0, "dearkd_cached": 51.0}
    assert summary["tests"] == {"test_a": "passed", "test_b": "failed", "test_c": "skipped: needs two CUDA GPUs"}
    assert summary["speed_224"]["median_step_ms"] == {"plain": 50.0}
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| stage1_vs_deit | 1.010 | <= 1.03 | True |" in table and "| plain | 50.0 | 1024 |" in table
    assert "teacher `regnety_160`" in table and "| cached_vs_plain | 1.020 |" in table
    assert (tmp_path / "tests.log").read_text() == "File src/x.py, <site-packages>/torch/a.py\n"
