"""Tiny models and data shared by the tests: everything is built from configs, nothing comes from the Hub."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification  # noqa: E402

IMAGE_SIZE = 16
NUM_LABELS = 3
# The ViT geometry every trainer test shares (ViT, DeiT and DearKD ViT configs all take these keys).
TINY_VIT = dict(
    image_size=IMAGE_SIZE,
    patch_size=4,
    num_channels=1,
    hidden_size=16,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=32,
    hidden_dropout_prob=0.0,
    num_labels=NUM_LABELS,
)
# DeiT-Ti (facebook/deit-tiny-patch16-224): the users' scale, for tests/gpu and test_users_scale_224.py.
DEIT_TINY = dict(
    image_size=224,
    patch_size=16,
    num_channels=3,
    hidden_size=192,
    num_hidden_layers=12,
    num_attention_heads=3,
    intermediate_size=768,
)


def make_vit(
    num_labels: int = NUM_LABELS, num_channels: int = 1, seed: int = 0, **overrides
) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = dict(TINY_VIT, num_channels=num_channels, num_labels=num_labels, attention_probs_dropout_prob=0.0)
    config.update(overrides)
    return ViTForImageClassification(ViTConfig(**config))


def make_resnet_teacher(
    num_labels: int = NUM_LABELS, num_channels: int = 1, seed: int = 1
) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=num_channels,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_labels,
    )
    return ResNetForImageClassification(config).eval()


def make_dataset(n: int = 32, num_labels: int = NUM_LABELS, num_channels: int = 1, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, num_channels, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, num_labels, (n,), generator=generator)
    return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.tolist()}).with_format("torch")


@pytest.fixture
def student():
    return make_vit()


@pytest.fixture
def teacher():
    return make_resnet_teacher()


@pytest.fixture
def dataset():
    return make_dataset()


def launch_two_processes(script: Path, args: list[str], tmp_path: Path, timeout: int = 300):
    """``accelerate launch`` of ``script`` as 2 CPU processes on a free port, offline, one thread each; with a fresh
    HF_HOME so that no saved accelerate config changes the launch. Returns the CompletedProcess."""
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(root / "src"),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(port), str(script)]
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, cwd=root, timeout=timeout)
