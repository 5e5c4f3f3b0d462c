#!/usr/bin/env python
"""Teacher outputs computed once: store K augmented views of every training image with the teacher's logits and
alignment targets on them, so that `run.py --teacher_cache DIR` trains stage 1 without the teacher (METHOD.md
section 6).

Give it run.py's data flags and student flags (the cache is made for that student's grid, alignment pairs and
normalisation, and that training set), the teacher, and how many views to store:

    python examples/cache_teacher.py --teacher_model_name_or_path outputs/teacher \
        --model_type dearkd_vit --config_overrides "hidden_size=96,num_hidden_layers=4" --image_size 28 \
        --train_fraction 0.1 --num_views 16 --output_dir outputs/teacher_cache
    accelerate launch examples/cache_teacher.py ...   # the processes split the shards between them

Re-running with the same arguments resumes a killed run; a larger ``--num_views`` extends a finished cache (its views
are kept bit for bit). The storage per view and in total is printed before anything is written, and a cache that
will not fit on the disk is refused. ``--push_to_hub`` uploads the finished cache as a dataset repository, which
``--teacher_cache ORG/NAME`` reads back.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from huggingface_hub import upload_folder
from transformers import HfArgumentParser

from dearkd_hf import load_teacher, resolve_alignment_pairs, write_teacher_cache
from dearkd_hf.data import DataTrainingArguments, ReplayableView, label_names, load_image_datasets
from dearkd_hf.hub import check_hub_dataset_repository, check_local_folder
from dearkd_hf.runs import LOCK_FILE, check_writable_folder, output_folder_lock
from dearkd_hf.scripts import ModelArguments, build_image_processor, build_student, run_main, student_inputs


@dataclass
class CacheArguments:
    """The teacher, the views and where the cache goes."""

    teacher_model_name_or_path: str = field(
        metadata={"help": "The CNN teacher: timm name, transformers classifier (Hub or folder), or a saved folder."}
    )
    output_dir: str = field(metadata={"help": "Where the cache is written (resumed and extended there)."})
    num_views: int = field(default=4, metadata={"help": "Augmented views stored per training image (e.g. 1-16)."})
    logits_top_k: int = field(
        default=0,
        metadata={"help": "Keep the teacher's top k logits per view (fp16) instead of all of them (0: all)."},
    )
    alignment_pairs: list[str] | None = field(
        default=None,
        metadata={"help": "As run.py's --alignment_pairs (default: the student's 1/4 and 1/2 blocks)."},
    )
    no_alignment: bool = field(
        default=False, metadata={"help": "Store no alignment targets (for runs with --beta 0: logit KD only)."}
    )
    seed: int = field(
        default=42, metadata={"help": "As run.py's --seed: it picks the --train_fraction subset and the views."}
    )
    batch_size: int = field(default=256, metadata={"help": "Images per teacher forward."})
    shard_size: int = field(default=4096, metadata={"help": "Images per shard on disk (one view each)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the finished cache as a Hub dataset repo."})
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Dataset repository for --push_to_hub; default: output_dir's name."}
    )
    max_shards: int | None = field(
        default=None, metadata={"help": "Debugging: stop each process after this many new shards, as if killed."}
    )


def parse_args(argv: list[str]) -> tuple[CacheArguments, ModelArguments, DataTrainingArguments]:
    parser = HfArgumentParser((CacheArguments, ModelArguments, DataTrainingArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def check_arguments(args: CacheArguments, model_args: ModelArguments, data_args: DataTrainingArguments) -> None:
    """Fail on flags the cache cannot honour, before anything is loaded."""
    if args.num_views < 1:
        raise ValueError(f"--num_views={args.num_views} must be >= 1 (views stored per image; e.g. 4 or 16).")
    if args.batch_size < 1 or args.shard_size < 1:
        raise ValueError(f"--batch_size={args.batch_size} and --shard_size={args.shard_size} must be >= 1.")
    unsupported = data_args.live_augmentation_flags()
    if unsupported:
        raise ValueError(
            f"{', '.join(unsupported)}: a teacher cache stores the default training views (random resized crop and "
            "flip) only; drop these flags here and in run.py --teacher_cache, or train with the live teacher."
        )
    model_args.check()
    check_local_folder(args.teacher_model_name_or_path, "--teacher_model_name_or_path")
    check_writable_folder(args.output_dir)


def main(argv: list[str] | None = None) -> str:
    args, model_args, data_args = parse_args(sys.argv[1:] if argv is None else argv)
    check_arguments(args, model_args, data_args)
    # Without cpu=True, processes started on a machine without GPUs would each believe they are alone.
    state = PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))
    if args.push_to_hub and state.is_main_process:
        check_hub_dataset_repository(hub_repository(args), nothing_done="nothing was cached")
    with output_folder_lock(args.output_dir, enabled=state.is_main_process):
        cache(args, model_args, data_args, state)
    state.destroy_process_group()
    return args.output_dir


def hub_repository(args: CacheArguments) -> str:
    """The dataset repository of --push_to_hub: --hub_model_id, else the output folder's name."""
    return args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))


def cache(args: CacheArguments, model_args: ModelArguments, data_args: DataTrainingArguments, state) -> None:
    """Build what run.py would (training split, student, processor), then write the teacher's outputs on its views."""
    torch.manual_seed(args.seed)
    dataset = load_image_datasets(data_args, seed=args.seed)["train"]
    teacher = load_teacher(args.teacher_model_name_or_path)
    student = build_student(model_args, label_names(dataset), teacher, data_args.image_size)
    processor = build_image_processor(model_args, teacher)
    image_size = model_args.training_image_size(data_args.image_size)
    geometry, mean, std = student_inputs(student, processor, teacher, image_size)
    pairs = []
    if not args.no_alignment:
        pairs = resolve_alignment_pairs(
            args.alignment_pairs, geometry.num_blocks, teacher.stage_names, teacher.hookable_layers()
        )
    teacher.to(state.device)
    finished = write_teacher_cache(
        teacher,
        dataset,
        args.output_dir,
        view=ReplayableView(geometry.image_size, tuple(mean), tuple(std), geometry.num_channels),
        grid=geometry.grid,
        pairs=pairs,
        num_views=args.num_views,
        seed=args.seed,
        top_k=args.logits_top_k,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        state=state,
        max_shards=args.max_shards,
        report=print if state.is_main_process else (lambda *_: None),
    )
    if finished is not None and args.push_to_hub and state.is_main_process:
        upload_folder(
            repo_id=hub_repository(args),
            folder_path=args.output_dir,
            repo_type="dataset",
            ignore_patterns=[LOCK_FILE],  # the lock held while uploading names this host, its pid and the command
        )


if __name__ == "__main__":
    run_main(main)
