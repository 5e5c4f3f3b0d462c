"""Launched by tests/test_multiprocess.py under `accelerate launch`: DearKD across the stage switch on every process.

Usage: helpers_distributed.py OUTPUT_DIR. Each rank writes OUTPUT_DIR/rank{N}.pt with its world size, the stages of
its training logs, its aligners before and after training and its student's weights after training.

Each rank seeds its own student differently and shifts its aligners (which DearKDTrainer seeds from args.seed) by
its rank, as unseeded scripts would differ: DDP must broadcast rank 0's initial weights (aligners included, since they
are a submodule of the student) and keep them in sync from there.
"""

from __future__ import annotations

import os
import sys

import torch
from helpers import make_config, make_dataset, make_resnet_teacher, make_vit

from dearkd_hf import DearKDTrainer


def main(output_dir: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    student = make_vit(seed=10 + rank)
    teacher = make_resnet_teacher()
    args = make_config(
        os.path.join(output_dir, "trainer"),
        num_train_epochs=2,
        distillation_stop_epoch=1.0,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        use_cpu=os.environ.get("DEARKD_TEST_DEVICE", "cpu") != "cuda",  # tests/gpu launches it on two GPUs
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = DearKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=make_dataset(32))
    with torch.no_grad():
        for parameter in trainer.aligners.head.parameters():
            parameter.add_(0.01 * rank)
    initial_aligners = {k: v.detach().clone() for k, v in trainer.aligners.head.state_dict().items()}
    trainer.train()

    accelerator = trainer.accelerator
    result = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "stages": [log["stage"] for log in trainer.state.log_history if "loss" in log],
        "teacher_released": trainer.teacher is None,
        "initial_aligners": initial_aligners,
        "aligners": {k: v.detach().cpu().clone() for k, v in trainer.aligners.head.state_dict().items()},
        "student": {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()},
    }
    os.makedirs(output_dir, exist_ok=True)
    torch.save(result, os.path.join(output_dir, f"rank{accelerator.process_index}.pt"))
    accelerator.wait_for_everyone()
    # Destroy the process group before the interpreter exits: left to teardown, gloo's threads were once aborted
    # ("terminate called without an active exception") after everything had been written.
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
