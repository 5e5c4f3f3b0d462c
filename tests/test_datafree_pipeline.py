"""Data-free DearKD end to end: images generated from the teacher train the student, evaluated on real images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from datasets import load_from_disk
from transformers import ResNetConfig, ResNetForImageClassification

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "examples" / "data" / "fashion_mnist_small"
STUDENT = "hidden_size=32,num_hidden_layers=4,num_attention_heads=2,intermediate_size=64,patch_size=4"


def run(script: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_generated_dataset_trains_student_evaluated_on_real_data(tmp_path):
    names = load_from_disk(str(EMBEDDED))["train"].features["label"].names
    torch.manual_seed(0)
    teacher = ResNetForImageClassification(
        ResNetConfig(
            num_channels=1,
            embedding_size=8,
            hidden_sizes=[8, 16],
            depths=[1, 1],
            layer_type="basic",
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
        )
    )
    teacher.save_pretrained(tmp_path / "teacher")
    generated = tmp_path / "generated"
    run(
        "generate.py",
        *("--teacher_model_name_or_path", str(tmp_path / "teacher"), "--output_dir", str(generated)),
        *("--num_images", "40", "--batch_size", "20", "--iterations", "2", "--resolution", "28"),
    )
    images = load_from_disk(str(generated))
    assert len(images) == 40 and images.features["label"].names == names

    student = tmp_path / "student"
    run(
        "run.py",
        *("--teacher_model_name_or_path", str(tmp_path / "teacher"), "--dataset_name", str(generated)),
        *("--eval_dataset_name", str(EMBEDDED), "--max_eval_samples", "50", "--config_overrides", STUDENT),
        *("--image_size", "28", "--num_train_epochs", "2", "--per_device_train_batch_size", "10"),
        *("--report_to", "none", "--save_strategy", "no", "--output_dir", str(student)),
    )
    results = json.loads((student / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    state = json.loads((student / "trainer_state.json").read_text())
    assert state["global_step"] == 8  # 40 generated images / batch 10 x 2 epochs: trained on the generated set only
    card = (student / "README.md").read_text()
    assert f"local folder `{generated.name}`" in card and str(generated) not in card
    assert "synthesised from the teacher" in card and f"Evaluated on local folder `{EMBEDDED.name}`" in card
