"""The users' scale end to end: 224-px RGB, the DeiT-Ti student and ResNet-50 / RegNetY teachers through run.py.

Every model is built from its published configuration with random weights (no Hub here), saved to a folder and
loaded by path exactly as a Hub checkpoint is: `facebook/deit-tiny-patch16-224` (DeiTForImageClassificationWithTeacher
with its image processor), timm `resnet50` and a RegNetY of the `regnety_160` family (`regnety_002`, to stay within
the time budget), and transformers ResNet with `microsoft/resnet-50`'s configuration. Fashion-MNIST images are served
as 224-px RGB; each run crosses the stage switch in four steps, evaluates, saves and is reloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from datasets import load_from_disk
from helpers import DEIT_TINY, EMBEDDED, run_script
from transformers import (
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    DeiTImageProcessor,
    ResNetConfig,
    ResNetForImageClassification,
)

LABELS = load_from_disk(str(EMBEDDED))["train"].features["label"].names
# facebook/deit-tiny-patch16-224's config.json (ImageNet's 1000 labels; run.py re-initialises the heads for 10).
DEIT_TINY_CONFIG = dict(DEIT_TINY, hidden_act="gelu", qkv_bias=True, layer_norm_eps=1e-12, num_labels=1000)
# microsoft/resnet-50's config.json, with the dataset's labels (logit distillation needs the same label space).
RESNET_50 = dict(
    num_channels=3, embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
    layer_type="bottleneck", hidden_act="relu", downsample_in_first_stage=False,
)  # fmt: skip
FEW_STEPS = [
    "--max_train_samples", "8", "--max_eval_samples", "8", "--per_device_train_batch_size", "4",
    "--per_device_eval_batch_size", "8", "--num_train_epochs", "2", "--distillation_stop_epoch", "1",
    "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def deit_tiny(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("deit-tiny-patch16-224")
    torch.manual_seed(0)
    DeiTForImageClassificationWithTeacher(DeiTConfig(**DEIT_TINY_CONFIG)).save_pretrained(folder)
    DeiTImageProcessor(size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224}).save_pretrained(
        folder
    )
    return str(folder)


def timm_teacher(folder: Path, name: str) -> str:
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False, num_classes=len(LABELS))
    timm.models.save_for_hf(model, folder, model_config={"label_names": LABELS}, safe_serialization=True)
    return str(folder)


def transformers_resnet50(folder: Path) -> str:
    torch.manual_seed(1)
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {name: i for i, name in enumerate(LABELS)}}
    ResNetForImageClassification(ResNetConfig(**RESNET_50, **labels)).save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
@pytest.mark.parametrize(
    "student_flag, teacher, pairs",
    [
        ("--model_name_or_path", "timm:resnet50", ["3:layer1", "6:layer2"]),
        ("--init_from_vit", "timm:regnety_002", ["3:s1", "6:s2"]),
        ("--init_from_vit", "transformers:resnet-50", ["3:resnet.encoder.stages.0", "6:resnet.encoder.stages.1"]),
    ],
)
def test_224px_rgb_run_crosses_the_switch_saves_reloads_and_evaluates(
    tmp_path, deit_tiny, student_flag, teacher, pairs
):
    source, name = teacher.split(":")
    folder = tmp_path / "teacher"
    teacher_dir = timm_teacher(folder, name) if source == "timm" else transformers_resnet50(folder)
    output_dir = tmp_path / "student"
    torch.set_num_threads(1)
    metrics = run_script.main(
        [student_flag, deit_tiny, "--teacher_model_name_or_path", teacher_dir, "--output_dir", str(output_dir),
         *FEW_STEPS]
    )  # fmt: skip

    assert 0.0 <= metrics["eval_accuracy"] <= 1.0  # evaluation ran, at 224 px
    state = json.loads((output_dir / "trainer_state.json").read_text())
    stages = [log["stage"] for log in state["log_history"] if "loss" in log]
    assert stages == [1.0, 1.0, 2.0, 2.0]
    card = (output_dir / "README.md").read_text()
    assert all(pair in card for pair in pairs), card  # the default pairs: blocks 3 and 6 x the first two stages

    reloaded = AutoModelForImageClassification.from_pretrained(output_dir)
    expected_type = "deit" if student_flag == "--model_name_or_path" else "dearkd_vit"
    assert reloaded.config.model_type == expected_type and reloaded.config.num_labels == len(LABELS)
    assert reloaded.config.image_size == 224 and reloaded.config.num_channels == 3
    with torch.no_grad():
        logits = reloaded.eval()(pixel_values=torch.randn(2, 3, 224, 224)).logits
    assert logits.shape == (2, len(LABELS))
