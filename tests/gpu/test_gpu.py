"""GPU readiness: bf16, the teacher's CUDA memory at the switch, torch.compile, two GPUs.

Skipped without CUDA, so the default suite never needs a GPU. `bash tools/gpu_check.sh` runs them on a CUDA
machine and records the outcome in benchmarks/results/gpu/. Models are built from configs with random weights.
"""

from __future__ import annotations

import gc
import math

import pytest
import timm
import torch
from datasets import Dataset
from helpers import DEIT_TINY, failure_report, launch_distributed_training
from transformers import TrainerCallback

from dearkd_hf import DearKDConfig, DearKDTrainer, DearKDViTConfig, DearKDViTForImageClassification

# Each test skips (rather than the module) so that a run without CUDA reports them and exits 0.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run tools/gpu_check.sh)")
NUM_LABELS = 10


def deit_tiny(image_size: int = 224, seed: int = 0, **overrides) -> DearKDViTForImageClassification:
    """DeiT-Ti geometry (192 wide, 12 blocks, 3 heads, patch 16) as a DearKD ViT, random weights."""
    torch.manual_seed(seed)
    config = {**DEIT_TINY, "image_size": image_size, "num_labels": NUM_LABELS, **overrides}
    return DearKDViTForImageClassification(DearKDViTConfig(**config))


def resnet(name: str = "resnet50", seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=NUM_LABELS)


def rgb_dataset(n: int, image_size: int, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, NUM_LABELS, (n,), generator=generator)
    return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.tolist()}).with_format("torch")


def config(tmp_path, **overrides) -> DearKDConfig:
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return DearKDConfig(**{**values, **overrides})


def stage1_loss(tmp_path, batch: dict[str, torch.Tensor], bf16: bool) -> tuple[float, dict[str, float]]:
    """The stage-1 loss of one batch as a training step computes it (the model prepared by accelerate, which puts
    the student's forward under autocast; the trainer runs the teacher under the same autocast)."""
    args = config(tmp_path, bf16=bf16, distillation_type="soft", tau=2.0)
    trainer = DearKDTrainer(model=deit_tiny(), teacher_model=resnet(), args=args)
    model = trainer.accelerator.prepare_model(trainer.model)
    model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
    components = {key: values[-1].float().item() for key, values in trainer._metrics.items()}
    return loss.float().item(), components


def test_bf16_stage1_loss_matches_fp32_on_a_batch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(16, 3, 224, 224, generator=generator).cuda(),
        "labels": torch.randint(0, NUM_LABELS, (16,), generator=generator).cuda(),
    }
    fp32, fp32_parts = stage1_loss(tmp_path, batch, bf16=False)
    bf16, bf16_parts = stage1_loss(tmp_path, batch, bf16=True)
    assert math.isfinite(bf16) and fp32 > 0
    # bf16 keeps 8 bits of mantissa; the losses themselves are computed in float32 from bf16 activations.
    assert bf16 == pytest.approx(fp32, rel=0.02), (fp32_parts, bf16_parts)
    for key in ("loss_ce", "loss_kd", "loss_align"):
        assert bf16_parts[key] == pytest.approx(fp32_parts[key], rel=0.03, abs=1e-3), key


class StageMemory(TrainerCallback):
    """CUDA memory held between steps (after the optimizer step and zero_grad), with the stage of each step."""

    def __init__(self, trainer: DearKDTrainer):
        self.trainer = trainer
        self.rows: list[tuple[int, int]] = []

    def on_step_end(self, args, state, control, **kwargs):
        gc.collect()
        torch.cuda.synchronize()
        self.rows.append((self.trainer.stage, torch.cuda.memory_allocated()))


def test_switch_returns_the_teachers_cuda_memory(tmp_path):
    teacher = resnet("resnet50")
    teacher_bytes = sum(t.numel() * t.element_size() for t in [*teacher.parameters(), *teacher.buffers()])
    args = config(tmp_path, num_train_epochs=2, distillation_stop_epoch=1.0, per_device_train_batch_size=4)
    trainer = DearKDTrainer(
        model=deit_tiny(image_size=64), teacher_model=teacher, args=args, train_dataset=rgb_dataset(16, 64)
    )
    del teacher
    memory = StageMemory(trainer)
    trainer.add_callback(memory)
    trainer.train()

    stage1 = [held for stage, held in memory.rows[1:] if stage == 1]  # after step 1: optimizer state exists
    stage2 = [held for stage, held in memory.rows if stage == 2]
    assert stage1 and stage2, memory.rows
    released = min(stage1) - max(stage2)
    assert released >= 0.9 * teacher_bytes, (released, teacher_bytes, memory.rows)


def test_torch_compile_trains_through_both_stages_or_says_why(tmp_path):
    args = config(
        tmp_path, num_train_epochs=2, distillation_stop_epoch=1.0, per_device_train_batch_size=4, torch_compile=True
    )
    trainer = DearKDTrainer(
        model=deit_tiny(image_size=32, num_hidden_layers=4),
        teacher_model=resnet("resnet18"),
        args=args,
        train_dataset=rgb_dataset(16, 32),
    )
    try:
        trainer.train()
    except Exception as error:  # a refusal must name torch_compile and say why
        assert "torch_compile" in str(error), repr(error)
        return
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["stage"] for log in logs] == [1.0] * 4 + [2.0] * 4
    assert all(math.isfinite(log["loss"]) for log in logs)
    assert trainer.teacher is None


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_train_across_the_stage_switch_in_sync(tmp_path):
    result = launch_distributed_training(tmp_path, cuda=True)
    assert result.returncode == 0, failure_report(result)
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    for i, rank in enumerate(ranks):
        assert rank["process_index"] == i and rank["num_processes"] == 2
        assert rank["distributed_type"] == "DistributedType.MULTI_GPU"
        assert rank["stages"] == [1.0] * 4 + [2.0] * 4 and rank["teacher_released"]
    for key in ranks[0]["student"]:
        assert torch.equal(ranks[0]["student"][key], ranks[1]["student"][key]), key
