"""Data-free DearKD, step 1: synthesise a labelled image dataset from a BatchNorm CNN teacher (METHOD.md section 5).

    python examples/generate.py --teacher_model_name_or_path ./teacher --num_images 10000 --output_dir ./synthetic
    python examples/generate.py ... --method fast   # an amortised generator network: far fewer teacher passes
    accelerate launch examples/generate.py ...   # the processes split the batches; the result is one dataset

Re-running with the same arguments resumes a killed run; a larger ``--num_images`` extends a finished one.
Student-aware rounds (docs/datafree.md): extend with ``--student_model_name_or_path`` (a student trained on the images
so far) and ``--adi_scale``, and the new images are also rewarded where that student disagrees with the teacher. The
output folder is loadable with ``datasets.load_from_disk`` and also holds ``samples.png`` (a grid, one row per class)
and ``generation_config.json`` (configuration, teacher, seed, mean final loss terms). All ``InversionConfig`` fields
are flags too (``--method``, ``--iterations``, ``--lr``, ``--bpid_weight``, ``--fast_steps``, ...).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from datasets import Dataset
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid, save_image
from transformers import HfArgumentParser

from dearkd_hf import DeepInversionGenerator, InversionConfig, create_generator, load_teacher
from dearkd_hf.hub import check_hub_dataset_repository, check_local_folder
from dearkd_hf.inversion import GENERATION_CONFIG_FILE, mean_loss_terms, read_rounds, write_dataset
from dearkd_hf.runs import check_writable_folder, output_folder_lock
from dearkd_hf.scripts import run_main

MAX_GRID_CLASSES = 32  # rows of samples.png; beyond this the grid would be unreadable anyway


@dataclass
class ScriptArguments:
    teacher_model_name_or_path: str = field(
        metadata={"help": "timm name, transformers model id, or a local folder saved by either."}
    )
    num_images: int = field(metadata={"help": "Images in the final dataset (exactly)."})
    output_dir: str = field(metadata={"help": "Where the dataset (and its shards, for resuming) is written."})
    student_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Student for the competition term (needs --adi_scale > 0): the new images are also rewarded where "
            "it disagrees with the teacher. Any classifier of the teacher's labels, e.g. a student run.py trained "
            "on this folder's images so far; each such extension is a round (docs/datafree.md)."
        },
    )
    samples_per_class: int = field(default=8, metadata={"help": "Images per class in samples.png."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the dataset to the Hub when done."})
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Dataset repository for --push_to_hub; default: output_dir's name."}
    )
    max_batches: int | None = field(
        default=None,
        metadata={"help": "Debugging: stop each process after this many new batches, without merging."},
    )


def main(argv: list[str] | None = None) -> None:
    script_args, config = HfArgumentParser((ScriptArguments, InversionConfig)).parse_args_into_dataclasses(args=argv)
    if script_args.num_images <= 0:
        raise ValueError(f"--num_images={script_args.num_images} must be > 0.")
    check_local_folder(script_args.teacher_model_name_or_path, "--teacher_model_name_or_path")
    check_local_folder(script_args.student_model_name_or_path, "--student_model_name_or_path")
    check_writable_folder(script_args.output_dir)
    # Without cpu=True, processes started on a machine without GPUs would each believe they are alone.
    state = PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))
    if script_args.push_to_hub and state.is_main_process:
        check_hub_dataset_repository(hub_repository(script_args), nothing_done="nothing was generated")
    # One run per output folder, from before anything is written there until the last file is.
    with output_folder_lock(script_args.output_dir, enabled=state.is_main_process):
        generate(script_args, config, state)
    state.destroy_process_group()


def hub_repository(script_args: ScriptArguments) -> str:
    """The dataset repository of --push_to_hub: --hub_model_id, else the output folder's name."""
    return script_args.hub_model_id or os.path.basename(os.path.abspath(script_args.output_dir))


def generate(script_args: ScriptArguments, config: InversionConfig, state: PartialState) -> None:
    generator = create_generator(
        load_teacher(script_args.teacher_model_name_or_path),
        config,
        student=script_args.student_model_name_or_path,
        device=state.device,
    )
    dataset = write_dataset(
        generator, script_args.output_dir, script_args.num_images, state=state, max_batches=script_args.max_batches
    )
    if dataset is not None and state.is_main_process:
        save_samples(dataset, os.path.join(script_args.output_dir, "samples.png"), script_args.samples_per_class)
        save_generation_config(generator, script_args, state.num_processes)
        if script_args.push_to_hub:
            dataset.push_to_hub(hub_repository(script_args))


def save_samples(dataset: Dataset, path: str, per_class: int) -> None:
    """One row per class (the first ``MAX_GRID_CLASSES``) with its first ``per_class`` images; blanks if fewer."""
    labels = dataset["label"]
    num_classes = min(dataset.features["label"].num_classes, MAX_GRID_CLASSES)
    rows = []
    for label in range(num_classes):
        indices = [i for i, y in enumerate(labels) if y == label][:per_class]
        images = [pil_to_tensor(image).float() / 255 for image in dataset.select(indices)["image"]]
        blank = torch.zeros_like(images[0] if images else pil_to_tensor(dataset[0]["image"]).float())
        rows.extend(images + [blank] * (per_class - len(images)))
    save_image(make_grid(rows, nrow=per_class, padding=1), path)


def save_generation_config(generator: DeepInversionGenerator, script_args: ScriptArguments, processes: int) -> None:
    """What a reader needs to reproduce or judge the dataset."""
    output_dir = script_args.output_dir
    num_batches = math.ceil(script_args.num_images / generator.config.batch_size)
    rounds = [r for r in read_rounds(output_dir) if r["first_batch"] < num_batches]
    for round_ in rounds:
        round_["end_batch"] = min(round_["end_batch"], num_batches)
        round_["loss_terms"] = mean_loss_terms(output_dir, round_["end_batch"], start=round_["first_batch"])
    payload = {
        "teacher": generator.teacher.source,
        "rounds": rounds,
        "seed": generator.config.seed,
        "num_images": script_args.num_images,
        "num_processes": processes,
        "labels": [generator.teacher.id2label[i] for i in range(generator.teacher.num_labels)],
        "inversion_config": generator.config.to_dict(),
        "loss_terms": mean_loss_terms(output_dir, num_batches),
    }
    with open(os.path.join(output_dir, GENERATION_CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)


if __name__ == "__main__":
    run_main(main)
