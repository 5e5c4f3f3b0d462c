"""examples/generate.py end to end, as a user runs it, on a tiny timm teacher saved to a local folder."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import PIL.Image
import pytest
import timm
import torch
from accelerate.state import AcceleratorState
from datasets import ClassLabel, Dataset, Image, load_from_disk
from helpers import launch_two_processes, tiny_dearkd_config

from dearkd_hf.modeling import DearKDViTForImageClassification

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "generate.py"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("teacher"))
    model_args = {"num_classes": 3, "in_chans": 1}
    timm.models.save_for_hf(
        timm.create_model("test_resnet", pretrained=False, **model_args), folder, model_args=model_args
    )
    return folder


def generate(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def image_hashes(dataset) -> list[str]:
    images = dataset.cast_column("image", Image(decode=False))["image"]
    return [hashlib.sha256(image["bytes"]).hexdigest() for image in images]


METHOD_FLAGS = {
    "deepinversion": ["--iterations=3"],
    "fast": ["--method=fast", "--fast_steps=2", "--fast_warmup=2"],
}
# What each method keeps in the shard folder besides the shards (fast: its meta-learned initialisation).
SHARED_FILES = {
    "deepinversion": ["fingerprint.json", "rounds.json"],
    "fast": ["fast_generator_init.safetensors", "fingerprint.json", "rounds.json"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_generate_writes_resumes_and_extends_a_dataset(teacher_dir, tmp_path, method):
    output_dir = tmp_path / "synthetic"
    common = [
        f"--teacher_model_name_or_path={teacher_dir}",
        f"--output_dir={output_dir}",
        *METHOD_FLAGS[method],
        "--resolution=16",
        "--batch_size=8",
    ]

    generate(*common, "--num_images=12", "--max_batches=1")  # stops as if killed after one shard
    assert sorted(os.listdir(output_dir / "shards")) == ["batch-000000", *SHARED_FILES[method]]
    assert not (output_dir / "state.json").exists()

    generate(*common, "--num_images=12")
    dataset = load_from_disk(str(output_dir))
    assert len(dataset) == 12 and len(set(image_hashes(dataset))) == 12
    assert dataset.features["label"] == ClassLabel(names=["LABEL_0", "LABEL_1", "LABEL_2"])
    assert dataset[0]["image"].mode == "L" and dataset[0]["image"].size == (16, 16)
    with PIL.Image.open(output_dir / "samples.png") as grid:
        assert grid.size == (8 * 17 + 1, 3 * 17 + 1)  # 8 samples per class, one row per class, 1-pixel padding
    config = json.loads((output_dir / "generation_config.json").read_text())
    assert config["teacher"].endswith(teacher_dir) and config["seed"] == 0 and config["num_images"] == 12
    assert config["inversion_config"]["method"] == method and config["inversion_config"]["jitter"] == 2
    steps, other = {"deepinversion": ("iterations", "fast_steps"), "fast": ("fast_steps", "iterations")}[method]
    assert config["inversion_config"][steps] in (2, 3) and other not in config["inversion_config"]
    assert {"ce", "bn", "tv", "l2", "bpid_intra", "bpid_bound", "total"} <= config["loss_terms"].keys()

    generate(*common, "--num_images=20")
    extended = load_from_disk(str(output_dir))
    assert image_hashes(extended)[:12] == image_hashes(dataset)
    assert len(extended) == 20 and len(set(image_hashes(extended))) == 20


@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_accelerate_launch_two_processes_writes_one_dataset_equal_to_one_process(teacher_dir, tmp_path, method):
    common = [
        f"--teacher_model_name_or_path={teacher_dir}",
        *METHOD_FLAGS[method],
        "--resolution=16",
        "--batch_size=8",
    ]
    generate(*common, "--num_images=24", f"--output_dir={tmp_path / 'single'}")
    result = launch_two_processes(
        SCRIPT, [*common, "--num_images=24", f"--output_dir={tmp_path / 'double'}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "double" / "generation_config.json").read_text())
    assert config["num_processes"] == 2
    double, single = load_from_disk(str(tmp_path / "double")), load_from_disk(str(tmp_path / "single"))
    assert len(double) == 24 and len(set(image_hashes(double))) == 24
    assert image_hashes(double) == image_hashes(single)  # batches depend on (seed, index) only


def test_a_student_aware_round_under_accelerate_launch_equals_one_process(teacher_dir, tmp_path):
    """Round 0 without a student, then round 1 extending it with a DearKD ViT student (docs/datafree.md): two
    processes make the same dataset as one, and generation_config.json records both rounds."""
    torch.manual_seed(0)
    student = DearKDViTForImageClassification(tiny_dearkd_config(grid=4, patch=4, num_labels=3, num_channels=1))
    student.save_pretrained(tmp_path / "student")
    common = [f"--teacher_model_name_or_path={teacher_dir}", *METHOD_FLAGS["fast"], "--resolution=16"]
    common += ["--batch_size=8"]
    round_1 = [f"--student_model_name_or_path={tmp_path / 'student'}", "--adi_scale=10", "--num_images=32"]
    for name in ("single", "double"):
        generate(*common, "--num_images=16", f"--output_dir={tmp_path / name}")
    generate(*common, *round_1, f"--output_dir={tmp_path / 'single'}")
    result = launch_two_processes(SCRIPT, [*common, *round_1, f"--output_dir={tmp_path / 'double'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    double, single = load_from_disk(str(tmp_path / "double")), load_from_disk(str(tmp_path / "single"))
    assert len(double) == 32 and image_hashes(double) == image_hashes(single)
    rounds = json.loads((tmp_path / "double" / "generation_config.json").read_text())["rounds"]
    assert [(r["first_batch"], r["end_batch"], r["adi_scale"]) for r in rounds] == [(0, 2, 0.0), (2, 4, 10.0)]
    assert rounds[0]["student"] is None and rounds[1]["student"] == str(tmp_path / "student")
    assert "adi" in rounds[1]["loss_terms"] and "adi" not in rounds[0]["loss_terms"]


def test_push_to_hub_uploads_the_finished_dataset(teacher_dir, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("dearkd_generate_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses resolve string annotations through the module
    spec.loader.exec_module(script)
    pushed, created = [], []
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, len(self))))
    monkeypatch.setattr(
        huggingface_hub, "create_repo", lambda repo_id, **kw: created.append((repo_id, kw["repo_type"]))
    )
    output_dir = tmp_path / "synthetic"
    script.main(
        [
            f"--teacher_model_name_or_path={teacher_dir}",
            f"--output_dir={output_dir}",
            "--iterations=1",
            "--resolution=16",
            "--batch_size=6",
            "--num_images=6",
            "--push_to_hub",
            "--hub_model_id=me/synthetic-images",
        ]
    )
    AcceleratorState._reset_state(reset_partial_state=True)  # the script's PartialState must not leak into other tests
    assert pushed == [("me/synthetic-images", 6)]
    assert created == [("me/synthetic-images", "dataset")]  # checked before generating


def test_push_to_hub_that_cannot_reach_the_hub_fails_before_generating(teacher_dir, tmp_path):
    """Offline (HF_HUB_OFFLINE=1, as in the tests), --push_to_hub is refused in one line and no shard is written."""
    script = load_script()
    output_dir = tmp_path / "synthetic"
    with pytest.raises(OSError, match=r"--push_to_hub: the dataset repository me/images cannot be created.*nothing"):
        script.main(
            [f"--teacher_model_name_or_path={teacher_dir}", f"--output_dir={output_dir}", "--iterations=1"]
            + ["--resolution=16", "--batch_size=6", "--num_images=6", "--push_to_hub", "--hub_model_id=me/images"]
        )
    AcceleratorState._reset_state(reset_partial_state=True)
    assert not (output_dir / "shards").exists()


def load_script():
    spec = importlib.util.spec_from_file_location("dearkd_generate_script_errors", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize(
    "flag, value, error, message",
    [
        ("--output_dir", "FILE/out", NotADirectoryError, r"--output_dir .*FILE/out: .* is a file, not a folder"),
        (
            "--output_dir",
            "/sys/dearkd_synthetic",
            PermissionError,
            r"--output_dir /sys/dearkd_synthetic: cannot write",
        ),
        ("--teacher_model_name_or_path", "./no_teacher", FileNotFoundError, r"./no_teacher: no such folder"),
        ("--student_model_name_or_path", "./no_student", FileNotFoundError, r"./no_student: no such folder"),
        ("--lr", "nan", ValueError, r"InversionConfig.lr=nan is not a finite number"),
        ("--student_model_name_or_path", "TEACHER", ValueError, r"A student was given but adi_scale=0.*--adi_scale"),
        ("--adi_scale", "1", ValueError, r"adi_scale > 0 needs a student .*--student_model_name_or_path"),
    ],
    ids=[
        "output-under-a-file",
        "output-not-writable",
        "teacher-path",
        "student-path",
        "lr-nan",
        "student-without-adi-scale",
        "adi-scale-without-student",
    ],
)
def test_bad_input_fails_before_generating(teacher_dir, tmp_path, flag, value, error, message):
    (tmp_path / "FILE").write_text("a file where a folder is expected")
    args = {"--teacher_model_name_or_path": teacher_dir, "--output_dir": str(tmp_path / "out"), "--num_images": "4"}
    args[flag] = value.replace("FILE", str(tmp_path / "FILE")).replace("TEACHER", teacher_dir)
    with pytest.raises(error, match=message.replace("FILE", str(tmp_path / "FILE"))):
        load_script().main([f"{key}={item}" for key, item in args.items()])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--fast_meta_lr=2"], r"InversionConfig.fast_meta_lr=2.0 must be in \(0, 1\]"),
        (["--fast_steps=0"], r"InversionConfig.fast_steps=0 must be >= 1"),
        (["--iterations=50"], r"InversionConfig.iterations=50 is a setting of method='deepinversion' only"),
    ],
    ids=["meta-lr", "steps", "deepinversion-setting"],
)
def test_bad_fast_settings_fail_before_generating(teacher_dir, tmp_path, flags, message):
    args = [f"--teacher_model_name_or_path={teacher_dir}", f"--output_dir={tmp_path / 'out'}", "--num_images=4"]
    with pytest.raises(ValueError, match=message):
        load_script().main([*args, "--method=fast", *flags])
    assert not (tmp_path / "out").exists()


def test_method_gan_is_refused_by_the_parser_naming_the_choices(teacher_dir, tmp_path, capsys):
    args = [f"--teacher_model_name_or_path={teacher_dir}", f"--output_dir={tmp_path / 'out'}", "--num_images=4"]
    with pytest.raises(SystemExit):
        load_script().main([*args, "--method=gan"])
    assert "argument --method: invalid choice: 'gan'" in capsys.readouterr().err
