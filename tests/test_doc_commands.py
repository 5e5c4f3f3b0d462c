"""Every command in the README and docs/ runs as written, shrunk only in sizes.

The commands are read from the ```bash blocks of README.md and docs/*.md: every line running `python
examples/<script>.py` (or `.venv/bin/python ...`) or `accelerate launch ... examples/<script>.py`, continuation lines
joined and a block's variables (`T="..."`, then `$T`) expanded as bash would. Each doc file's commands run in order
(the later ones read what the earlier ones wrote: a teacher, generated images, a cache) in a working folder of their
own, where the relative paths of the commands resolve; examples/ is a link to this checkout's.

What is changed, and why (nothing else is):
- Sizes. Appended flags win over the command's own (argparse keeps the last): `run.py` and `train_teacher.py` train on
  16 examples, evaluate on 8, with batches of 8, for 2 steps (`train_teacher.py`: 1); `generate.py` makes 16 images
  in batches of 16 (`--fast_warmup 2`, `--iterations 2` where the command sets them); `cache_teacher.py` caches the
  same 16 training examples as the `run.py` that reads the cache. `--image_size 224` becomes 32 and 112 becomes 16
  (the stand-ins below are built for 32 px, as the Hub's models are for 224 px).
- The Hub. No test reaches it (HF_HUB_OFFLINE=1): a Hub name a command needs (a student, a teacher, a dataset, timm
  weights asked for by `--pretrained`) is a local stand-in in the working folder, under the very same name, which
  transformers, timm and datasets then load from disk: a tiny model of the same family (random weights; transformers
  ViT, DeiT, DINOv2, BEiT and data2vec-vision students, timm ViTs as transformers loads them; timm's `test_resnet`
  for a timm CNN), or a tiny dataset with the named one's columns and split names. A folder the docs assume exists
  (`outputs/teacher`: "a teacher you trained", `my_images/`) is written the same way.
- The device. Subprocesses see no GPU; a command with `--bf16` also gets `--use_cpu true`, which trains it in
  bfloat16 on the CPU (transformers refuses `--bf16` without a GPU otherwise).
- The interpreter. `python` and `.venv/bin/python` are this one; the `python` commands of a doc file run one after
  the other in one subprocess (each script run as `__main__` with its own `sys.argv`, as `python script.py` runs it,
  so the libraries are imported once), with a time limit; `accelerate launch` commands run as their own launch.

Commands that cannot run offline on a CPU as written are listed in NOT_RUN with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_from_disk
from PIL import Image as PILImage
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    BitImageProcessor,
    Data2VecVisionConfig,
    Data2VecVisionForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2ForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from dearkd_hf.models import save_timm_teacher

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIME_LIMIT = 420  # seconds, per subprocess (a doc file's python commands together, or one accelerate launch)

# Commands that do not run here, with why: the text as the docs have it (continuations joined, spaces collapsed).
NOT_RUN = {
    "accelerate launch examples/run.py --teacher_model_name_or_path ... --bf16 true": (
        "'...' stands for the rest of a run's flags; the same launch with every flag given is README.md's "
        "`accelerate launch examples/run.py` command, which runs"
    ),
    "accelerate launch --num_processes 8 examples/run.py ...": "8 GPUs, and '...' for the run's flags",
    "accelerate launch --num_machines 2 --machine_rank 0 --main_process_ip HOST --num_processes 16 "
    "examples/run.py ...": ("two machines of 8 GPUs (HOST is the first one's address), and '...' for the run's flags"),
}

# Appended to every command of a script: what shrinks it (see the module's docstring).
DATA = ["--max_train_samples", "16", "--max_eval_samples", "8"]
BATCHES = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8"]
SHRINK = {
    "run.py": [*DATA, *BATCHES, "--max_steps", "2"],
    "train_teacher.py": [*DATA, *BATCHES, "--max_steps", "1"],
    "generate.py": ["--num_images", "16", "--batch_size", "16"],
    "cache_teacher.py": DATA,
}
# Appended only when the command sets the flag.
SHRINK_IF_GIVEN = {"--fast_warmup": "2", "--iterations": "2"}
IMAGE_SIZES = {"224": "32", "112": "16"}


@dataclass
class DocCommand:
    doc: str  # README.md, docs/data.md, ...
    text: str  # as the docs have it, continuations joined and spaces collapsed
    argv: list[str]  # variables expanded, split as bash splits it

    @property
    def launcher(self) -> list[str]:
        """The `accelerate launch` arguments before the script (empty for a `python` command)."""
        return self.argv[2 : self.script_index] if self.argv[:2] == ["accelerate", "launch"] else []

    @property
    def script_index(self) -> int:
        return next(i for i, arg in enumerate(self.argv) if re.fullmatch(r"examples/\w+\.py", arg))

    @property
    def script(self) -> str:
        return self.argv[self.script_index]

    @property
    def args(self) -> list[str]:
        return self.argv[self.script_index + 1 :]


COMMAND = re.compile(r"^(\S*/)?(python3?|accelerate launch)\b.*\bexamples/\w+\.py")
ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=(.*)$")


def doc_commands() -> list[DocCommand]:
    """Every `python examples/...` / `accelerate launch ... examples/...` line of a ```bash block, in order."""
    found = []
    for path in DOCS:
        blocks = re.findall(r"^```bash\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)
        for block in blocks:
            variables: dict[str, str] = {}
            for line in block.replace("\\\n", " ").splitlines():
                line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())  # a comment dropped, spaces collapsed
                assignment = ASSIGNMENT.match(line)
                if assignment:
                    variables[assignment.group(1)] = shlex.split(assignment.group(2))[0]
                    continue
                if not COMMAND.match(line):
                    continue
                expanded = re.sub(r"\$\{?(\w+)\}?", lambda m, known=variables: known[m.group(1)], line)
                found.append(DocCommand(str(path.relative_to(ROOT)), line, shlex.split(expanded)))
    return found


def test_every_doc_command_is_run_or_listed_with_a_reason():
    commands = doc_commands()
    assert len(commands) >= 15, [c.text for c in commands]  # the extraction itself works
    runnable = {c.doc for c in commands if c.text not in NOT_RUN}
    assert runnable <= set(WORKSPACES), f"no working folder for the commands of {runnable - set(WORKSPACES)}"
    stale = set(NOT_RUN) - {c.text for c in commands}
    assert not stale, f"NOT_RUN lists commands no doc has any more: {stale}"
    for command in commands:
        assert command.script.removeprefix("examples/") in SHRINK, f"no shrinking flags for {command.text}"


def shrunk(command: DocCommand) -> list[str]:
    """The command's script arguments with the sizes shrunk (see the module's docstring)."""
    args = list(command.args)
    for i, arg in enumerate(args[:-1]):
        if arg == "--image_size" and args[i + 1] in IMAGE_SIZES:
            args[i + 1] = IMAGE_SIZES[args[i + 1]]
    args += SHRINK[command.script.removeprefix("examples/")]
    args += [part for flag, value in SHRINK_IF_GIVEN.items() if flag in args for part in (flag, value)]
    if "--bf16" in args:
        args += ["--use_cpu", "true"]
    return args


# ---- the stand-ins ----

FASHION_MNIST = (
    load_from_disk(str(ROOT / "examples" / "data" / "fashion_mnist_small"))["train"].features["label"].names
)
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENET_FIRST = ["tench", "goldfish", "great white shark", "tiger shark"]
NATIVE = 32  # the stand-ins' own image size, as 224 is the Hub models'
VIT_SHAPE = dict(image_size=NATIVE, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=4)
VIT_SHAPE.update(num_attention_heads=2, intermediate_size=32)
TIMM_VIT_SHAPE = dict(img_size=NATIVE, patch_size=4, in_chans=3, embed_dim=16, depth=4, num_heads=2)


def images(n: int, channels: int = 3, seed: int = 0) -> list[PILImage.Image]:
    rng = np.random.default_rng(seed)
    shape = (NATIVE, NATIVE, 3) if channels == 3 else (NATIVE, NATIVE)
    return [PILImage.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)) for _ in range(n)]


def image_dataset(names: list[str], n: int, image_column: str = "image", seed: int = 0) -> Dataset:
    features = Features({image_column: Image(), "label": ClassLabel(names=names)})
    labels = [i % len(names) for i in range(n)]
    return Dataset.from_dict({image_column: images(n, seed=seed), "label": labels}, features=features)


def resnet_teacher(folder: Path, labels: list[str], channels: int = 1) -> None:
    """A tiny transformers ResNet (with BatchNorm, which generate.py's prior needs), as `train_teacher.py
    --model_type resnet` writes one."""
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )  # fmt: skip
    ResNetForImageClassification(config).save_pretrained(folder)


def timm_cnn(folder: Path, labels: list[str]) -> None:
    """timm's tiny `test_resnet` in timm's folder format, standing in for a timm CNN on the Hub."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=len(labels), in_chans=3)
    save_timm_teacher(model, str(folder), labels, mean=(0.5,) * 3, std=(0.5,) * 3, image_size=NATIVE)


def transformers_student(folder: Path, model_class, config_class, processor=None, **extra) -> None:
    torch.manual_seed(0)
    model_class(config_class(**VIT_SHAPE, num_labels=10, **extra)).save_pretrained(folder)
    processor = processor or ViTImageProcessor(size={"height": NATIVE, "width": NATIVE}, image_mean=[0.5] * 3)
    processor.save_pretrained(folder)


def timm_student(folder: Path, architecture: str) -> None:
    """A timm ViT as transformers loads a timm checkpoint (TimmWrapper; its processor is read from its config)."""
    torch.manual_seed(0)
    pretrained_cfg = timm.models.get_pretrained_cfg(architecture).to_dict()
    pretrained_cfg.update(input_size=(3, NATIVE, NATIVE), crop_pct=1.0)
    config = TimmWrapperConfig(
        architecture=architecture, model_args=dict(TIMM_VIT_SHAPE), num_labels=10, pretrained_cfg=pretrained_cfg
    )
    TimmWrapperForImageClassification(config).save_pretrained(folder)


def readme(work: Path) -> None:
    """README.md: DeiT-Ti from a timm ResNet-50 on ImageNet (all three from the Hub)."""
    transformers_student(work / "facebook/deit-tiny-patch16-224", ViTForImageClassification, ViTConfig)
    timm_cnn(work / "timm/resnet50.a1_in1k", IMAGENET_FIRST)
    splits = {"train": image_dataset(IMAGENET_FIRST, 16), "validation": image_dataset(IMAGENET_FIRST, 8, seed=1)}
    DatasetDict(splits).save_to_disk(str(work / "path/or/hub/imagenet-1k"))


def data_md(work: Path) -> None:
    """docs/data.md: an imagefolder of one's own images, timm's pretrained resnet18, DeiT-Ti."""
    for split, n in (("train", 4), ("val", 2)):
        for label in ("cat", "dog"):
            (work / "my_images" / split / label).mkdir(parents=True)
            for i, image in enumerate(images(n, seed=len(label) + n)):
                image.save(work / "my_images" / split / label / f"{i}.png")
    timm_cnn(work / "resnet18", ["cat", "dog"])
    transformers_student(work / "facebook/deit-tiny-patch16-224", ViTForImageClassification, ViTConfig)


def teacher_on_fashion_mnist(work: Path) -> None:
    """docs/datafree.md and docs/teacher_cache.md: `outputs/teacher`, a teacher trained on the embedded dataset."""
    resnet_teacher(work / "outputs/teacher", FASHION_MNIST)


def students_md(work: Path) -> None:
    """docs/students.md: timm's pretrained ResNet-50 fine-tuned on CIFAR-10, then one student of each family."""
    timm_cnn(work / "resnet50.a1_in1k", IMAGENET_FIRST)
    splits = {"train": image_dataset(CIFAR10, 20, "img"), "test": image_dataset(CIFAR10, 10, "img", seed=1)}
    DatasetDict(splits).save_to_disk(str(work / "uoft-cs/cifar10"))
    relative = dict(use_relative_position_bias=True)
    crop = BitImageProcessor(size={"shortest_edge": 36}, crop_size=NATIVE, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    transformers_student(work / "google/vit-base-patch16-224", ViTForImageClassification, ViTConfig)
    transformers_student(
        work / "facebook/deit-tiny-distilled-patch16-224", DeiTForImageClassificationWithTeacher, DeiTConfig
    )
    transformers_student(
        work / "facebook/dinov2-small-imagenet1k-1-layer", Dinov2ForImageClassification, Dinov2Config, crop
    )
    transformers_student(work / "microsoft/beit-base-patch16-224", BeitForImageClassification, BeitConfig, **relative)
    transformers_student(
        work / "facebook/data2vec-vision-base-ft1k",
        Data2VecVisionForImageClassification,
        Data2VecVisionConfig,
        **relative,
    )
    timm_student(work / "timm/vit_tiny_patch16_224.augreg_in21k", "vit_tiny_patch16_224")
    timm_student(work / "timm/deit_tiny_distilled_patch16_224.fb_in1k", "deit_tiny_distilled_patch16_224")
    timm_student(work / "timm/vit_small_patch14_reg4_dinov2.lvd142m", "vit_small_patch14_reg4_dinov2")


# doc file -> what its commands need in their working folder
WORKSPACES = {
    "README.md": readme,
    "docs/data.md": data_md,
    "docs/datafree.md": teacher_on_fashion_mnist,
    "docs/students.md": students_md,
    "docs/teacher_cache.md": teacher_on_fashion_mnist,
}

# Runs each command given as JSON: the script as __main__ with its sys.argv, as `python script.py ARGS` does.
RUNNER = """
import json, os, runpy, sys, time
for argv in json.loads(sys.argv[1]):
    print("$ python " + " ".join(argv), flush=True)
    sys.argv, sys.path[0] = list(argv), os.path.dirname(os.path.abspath(argv[0]))
    start, status = time.time(), 0
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    print(f"[exit status {status} after {time.time() - start:.1f} s]", flush=True)
    if status:
        sys.exit(status)
"""


def run(argv: list[str], work: Path, commands: int = 1) -> None:
    """Run ``argv`` in ``work`` offline and on the CPU; it must succeed (``commands``: how many runner lines must
    report exit status 0). DOC_COMMANDS_SHOW=1 prints the output, to see what ran."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(work / ".hf_home"),  # no saved accelerate config, no shared caches
    }
    result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=TIME_LIMIT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    if argv[1] == "-c":
        assert output.count("[exit status 0 after") == commands, output[-6000:]
    if os.environ.get("DOC_COMMANDS_SHOW"):
        print(output)


@pytest.mark.parametrize("doc", list(WORKSPACES))
def test_the_commands_of_a_doc_run_as_written_shrunk(tmp_path, doc):
    commands = [c for c in doc_commands() if c.doc == doc and c.text not in NOT_RUN]
    assert commands
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    WORKSPACES[doc](tmp_path)
    pending: list[list[str]] = []  # python commands not run yet: one subprocess runs them in order
    for command in commands:
        argv = [command.script, *shrunk(command)]
        if command.argv[0] == "accelerate":
            if pending:
                run([sys.executable, "-c", RUNNER, json.dumps(pending)], tmp_path, len(pending))
                pending = []
            launch = [sys.executable, "-m", "accelerate.commands.launch", *command.launcher]
            run([*launch, *argv], tmp_path)
        else:
            pending.append(argv)
    if pending:
        run([sys.executable, "-c", RUNNER, json.dumps(pending)], tmp_path, len(pending))
    for command in commands:
        output_dir = command.args[command.args.index("--output_dir") + 1]
        assert any((tmp_path / output_dir).iterdir()), f"{command.text}: nothing in {output_dir}"
