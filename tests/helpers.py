"""What the tests share besides fixtures (those are in conftest.py): tiny models and data built from configs, a tiny
DearKDConfig, examples/run.py as a module with its tiny flags, a tiny BatchNorm CNN for the data-free generators,
launchers of two processes, and files as a killed run leaves them. Nothing comes from the Hub.

Test files import from here, never from another test file or from conftest.py. conftest.py imports this module for
every test file, so it stays cheap to import: dearkd_hf and the example scripts are imported where first used (the
example scripts through :func:`example_script`; ``from helpers import run_script`` loads examples/run.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch
from datasets import Dataset, Image, load_from_disk
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

ROOT = Path(__file__).resolve().parents[1]

# ---- tiny models and data ----

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


def tiny_dearkd_config(grid: int, patch: int, **overrides):
    """A DearKD ViT config of the modeling tests: a ``grid`` x ``grid`` patch grid, 32 wide, 2 blocks of 4 heads,
    5 labels; ``overrides`` are the test's own values."""
    from dearkd_hf.modeling import DearKDViTConfig

    values = dict(image_size=grid * patch, patch_size=patch, hidden_size=32, num_hidden_layers=2)
    values.update(num_attention_heads=4, intermediate_size=64, num_labels=5)
    return DearKDViTConfig(**{**values, **overrides})


def with_random_positional_weights(model, seed: int = 4) -> None:
    """Trained-looking MHCA positional weights: each MHCA layer's ``v_h`` moved by 0.3 x a standard normal draw."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.dearkd_vit.layers:
            weight = getattr(layer.attention, "positional_weight", None)
            if weight is not None:
                weight.add_(0.3 * torch.randn(weight.shape, generator=generator))


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


def make_config(output_dir, **overrides):
    """The tiny tests' DearKDConfig: into ``output_dir``, on the CPU, reporting nowhere, without the teacher check
    (a random-weight teacher is weak by it, and its extra teacher forwards would count in tests of the stages; its
    own tests, tests/test_teacher_check.py, turn it on); ``overrides`` are the test's own settings."""
    from dearkd_hf import DearKDConfig

    values = {"output_dir": str(output_dir), "report_to": "none", "use_cpu": True, "teacher_check_samples": 0}
    return DearKDConfig(**{**values, **overrides})


# ---- examples/run.py on the embedded dataset ----

EMBEDDED = ROOT / "examples" / "data" / "fashion_mnist_small"
STUDENT = "hidden_size=32,num_hidden_layers=4,num_attention_heads=2,intermediate_size=64,patch_size=4"


def example_script(name: str) -> ModuleType:
    """``examples/<name>.py`` as the module ``dearkd_<name>_script``, loaded once."""
    module_name = f"dearkd_{name}_script"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses resolve string annotations through the module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]


def __getattr__(name: str):
    """``run_script``: examples/run.py as a module, loaded on first use."""
    if name == "run_script":
        return example_script("run")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_teacher(folder: Path, num_labels: int, names: list[str] | None = None) -> str:
    """A tiny grayscale ResNet saved in ``folder``, with the embedded subset's first ``num_labels`` labels (or
    ``names``)."""
    names = names or load_from_disk(str(EMBEDDED))["train"].features["label"].names[:num_labels]
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=1,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_labels,
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )
    ResNetForImageClassification(config).save_pretrained(folder)
    return str(folder)


def tiny_args(teacher: str, output_dir: Path, epochs: int = 2) -> list[str]:
    """run.py's flags for a tiny run: 64 training images at 28 px, batches of 16 (4 steps per epoch)."""
    return [
        "--teacher_model_name_or_path", teacher, "--config_overrides", STUDENT, "--image_size", "28",
        "--max_train_samples", "64", "--max_eval_samples", "32", "--num_train_epochs", str(epochs),
        "--per_device_train_batch_size", "16", "--report_to", "none", "--output_dir", str(output_dir),
    ]  # fmt: skip


class FakeHubApi:
    """Stands in for transformers' shared HfApi: records repos and what upload_folder would upload, sends nothing."""

    def __init__(self):
        self.repos: list[str] = []
        self.uploads: list[dict] = []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=True, **kwargs):
        self.repos.append(repo_id)
        return SimpleNamespace(repo_id=repo_id, url=f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, allow_patterns=None, **kwargs):
        """The files huggingface_hub would upload (same walk and filter), with what they hold at upload time."""
        folder = Path(folder_path)
        patterns = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        relpaths = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
        files = list(
            filter_repo_objects(
                relpaths, allow_patterns=allow_patterns, ignore_patterns=patterns + DEFAULT_IGNORE_PATTERNS
            )
        )
        tensors = {}
        for name in files:
            if name.endswith(".safetensors"):
                with safe_open(folder / name, framework="pt") as f:
                    tensors[name] = list(f.keys())
        card = (folder / "README.md").read_text() if "README.md" in files else None
        self.uploads.append({"repo_id": repo_id, "files": files, "tensors": tensors, "card": card, **kwargs})
        if kwargs.get("run_as_future"):  # the Trainer's pushes at each save wait on these
            done = Future()
            done.set_result(None)
            return done
        return None

    def __getattr__(self, name):
        raise AssertionError(f"unexpected Hub call: hf_api().{name}")


# ---- the data-free generators' teacher ----

SIDE = 16  # the side of the generated images


def tiny_teacher(seed: int = 0, num_labels: int = NUM_LABELS):
    """A random BN CNN whose running statistics come from a few train-mode passes on noise.

    The classifier weights are scaled up so that the random teacher's logits depend on the input enough to invert.
    """
    from dearkd_hf.models.teachers import load_teacher

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_labels),
    ).train()
    with torch.no_grad():
        for _ in range(10):
            net(torch.randn(32, 1, SIDE, SIDE))
        net[-1].weight.mul_(10)
    return load_teacher(net, mean=(0.5,), std=(0.5,), id2label={i: f"class_{i}" for i in range(num_labels)})


def inversion_config(**overrides):
    """A DeepInversion configuration of two iterations on batches of 6 SIDE-px images."""
    from dearkd_hf.inversion import InversionConfig

    return InversionConfig(**{"iterations": 2, "batch_size": 6, "resolution": SIDE, **overrides})


def image_hashes(dataset) -> list[str]:
    return [
        hashlib.sha256(row["bytes"]).hexdigest() for row in dataset.cast_column("image", Image(decode=False))["image"]
    ]


# ---- two processes ----


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(script: Path, args: list[str], tmp_path: Path, timeout: int = 300):
    """``accelerate launch`` of ``script`` as 2 CPU processes on a free port, offline, one thread each; with a fresh
    HF_HOME so that no saved accelerate config changes the launch. Returns the CompletedProcess."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
    }
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(free_port()), str(script)]
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def launch_distributed_training(output_dir: Path, cuda: bool = False) -> subprocess.CompletedProcess:
    """tests/helpers_distributed.py under ``accelerate launch``: two processes on CPU (gloo), or with ``cuda=True``
    one per GPU (nccl; tests/gpu)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(output_dir / "hf_home"),  # no user accelerate config leaks in
        "MASTER_ADDR": "127.0.0.1",
        "DEARKD_TEST_DEVICE": "cuda" if cuda else "cpu",
    }
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(free_port()), str(ROOT / "tests" / "helpers_distributed.py"), str(output_dir),
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def failure_report(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "Error" in line and "[rank" in line]
    return "\n".join(errors[:10]) + "\n...\n" + output[-3000:]


# ---- files as a killed run leaves them ----


def truncate(path: Path) -> None:
    """A file the kill interrupted half-way through writing."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_checkpoint(folder: Path, step: int) -> Path:
    """The files a complete Trainer checkpoint holds (trainer_state.json written last)."""
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    torch.save({"step": step}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def write_lock(out: Path, pid: int, host: str) -> None:
    """The lock file of a run of process ``pid`` on ``host`` (written by hand, not held by this process)."""
    from dearkd_hf.runs.lock import LOCK_FILE

    out.mkdir(exist_ok=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host, "since": "2026-01-01T00:00:00+00:00"}))
