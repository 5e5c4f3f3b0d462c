"""What the example scripts share on the command line: flags or one .json/.yaml file, and config overrides."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import logging
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser, PretrainedConfig, TrainingArguments

from ..runs.checkpoints import checkpoint_problem, last_complete_checkpoint

logger = logging.getLogger(__name__)

# What bad input raises in dearkd_hf and its scripts; printed as one line by `run_main`, anything else as a traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)
TRACEBACK_ENV = "DEARKD_TRACEBACK"

# Loader workers per training process at most: one GPU training DeiT-Ti at 224 px with the DeiT recipe needs about
# 12 (benchmarks/results/gpu/speed_224.json, README "Data loading").
MAX_DEFAULT_WORKERS = 16


# The Trainer's flags that a short --help shows (beside every flag of the script's own dataclasses); --help-all shows
# all of them.
COMMON_TRAINER_FLAGS = (
    "output_dir",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "seed",
    "bf16",
    "eval_strategy",
    "save_strategy",
    "logging_steps",
    "report_to",
    "resume_from_checkpoint",
    "push_to_hub",
    "hub_model_id",
)


def short_help_parser(parser: HfArgumentParser) -> HfArgumentParser:
    """The parser of a short ``--help``: the script's own arguments and DearKD's first, then the Trainer's common
    flags under their own heading (the rest: ``--help-all``)."""
    groups = []
    for dtype in parser.dataclass_types:
        if not issubclass(dtype, TrainingArguments):
            groups.append(dtype)
            continue
        hints = typing.get_type_hints(dtype)
        trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
        own = [f for f in dataclasses.fields(dtype) if f.init and f.name not in trainer_fields]
        common = [f for f in dataclasses.fields(dtype) if f.name in COMMON_TRAINER_FLAGS]
        for name, fields in ((f"{dtype.__name__} (the method's own)", own), ("Trainer (common)", common)):
            if not fields:
                continue
            copies = [
                (
                    f.name,
                    hints[f.name],
                    dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata),
                )
                for f in fields
            ]
            group = dataclasses.make_dataclass(name.split()[0], copies)
            group._argument_group_name = name
            groups.append(group)
    return HfArgumentParser(
        groups, epilog="Every other transformers TrainingArguments flag is accepted too: see --help-all."
    )


def parse_script_args(parser: HfArgumentParser, argv: list[str]) -> tuple:
    """Command-line flags, or a single .json/.yaml file holding them (as transformers' example scripts accept).

    ``-h``/``--help`` prints a short help (the script's and DearKD's flags first, the Trainer's common ones after);
    ``--help-all`` prints every flag, the Trainer's included.
    """
    if "--help-all" in argv:
        parser.parse_args(["--help"])
    if "-h" in argv or "--help" in argv:
        short_help_parser(parser).parse_args(["--help"])
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(yaml_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def parse_config_overrides(overrides: str | None) -> dict[str, Any]:
    """`"a=1,b=[2,3],c=gelu"` -> {"a": 1, "b": [2, 3], "c": "gelu"}; commas inside brackets stay in their value.

    Unlike `PretrainedConfig.update_from_string`, this accepts lists, which ResNet-style configs need per stage.
    """
    if not overrides:
        return {}
    parsed = {}
    for item in re.split(r",(?![^\[\]]*\])", overrides):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config_overrides: expected key=value, got {item!r}.")
        parsed[key.strip()] = _literal(value.strip())
    return parsed


def _literal(value: str) -> Any:
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(value)
        except (ValueError, SyntaxError):
            continue
    return value


def check_config_overrides(
    config: PretrainedConfig, overrides: dict[str, Any], flag: str = "--config_overrides"
) -> None:
    """Reject keys that ``config`` (built without the overrides) does not define: a typo would be stored silently."""
    unknown = [key for key in overrides if not hasattr(config, key)]
    if unknown:
        known = sorted(config.to_dict())
        hints = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        named = ", ".join(
            f"{key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for key, hint in hints.items()
        )
        raise ValueError(f"{flag}: {type(config).__name__} has no {named}; its keys are {known}.")


def resume_checkpoint(training_args: TrainingArguments, required_files: Sequence[str] = ()) -> str | None:
    """--resume_from_checkpoint, else the last *complete* checkpoint in --output_dir, so that a re-run continues a
    killed one (a checkpoint folder left partial by the kill is skipped, with a warning saying why).

    ``required_files``: what a checkpoint of this run must hold besides the Trainer's files (a trainer's
    ``checkpoint_files``).
    """
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is not None:
        problem = checkpoint_problem(checkpoint, required_files)
        if problem is not None:
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: cannot resume from it, {problem}.")
    else:
        checkpoint = last_complete_checkpoint(training_args.output_dir, required_files)
    if checkpoint is not None:
        logger.info(f"Resuming from {checkpoint}.")
    return checkpoint


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's ``main``: bad input ends with its one-line message and exit status 1, not a traceback.

    Set ``DEARKD_TRACEBACK=1`` to see the traceback of those errors too; other exceptions always show it.
    """
    try:
        main()
    except USER_ERRORS as error:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {error}\n(set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(1)


def explicit_argument_names(argv: Sequence[str]) -> set[str]:
    """The argument names a command line (or its single .json/.yaml file) sets: what no default (a recipe's, the
    loader's) may override.

    ``--name value``, ``--name=value`` and ``--no_name`` (a boolean switched off) all count as naming ``name``.
    """
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        with open(os.path.abspath(argv[0]), encoding="utf-8") as f:
            values = json.load(f) if argv[0].endswith(".json") else yaml.safe_load(f)
        return set(values or {})
    names = set()
    for arg in argv:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            names.add(name)
            if name.startswith("no_"):
                names.add(name[3:])
    return names


def default_num_workers(cpu_count: int | None, num_processes: int = 1, cuda: bool = True) -> int:
    """Loader workers per training process: on CUDA the CPUs left beside the processes themselves, at most
    ``MAX_DEFAULT_WORKERS``; on CPU none, since the training step itself uses the cores."""
    if not cuda:
        return 0
    spare = (cpu_count or 1) // max(1, num_processes) - 1
    return max(0, min(MAX_DEFAULT_WORKERS, spare))


def with_loader_defaults(training_args: TrainingArguments, explicit: Sequence[str] = ()) -> TrainingArguments:
    """The examples' loader: when a CUDA device trains, workers from the CPU count, kept alive across epochs, and
    pinned memory; none of these on CPU. Flags named in ``explicit`` keep their values."""
    cuda = torch.cuda.is_available() and not training_args.use_cpu
    workers = training_args.dataloader_num_workers
    if "dataloader_num_workers" not in explicit:
        workers = default_num_workers(os.cpu_count(), training_args.world_size, cuda)
    changes = {
        "dataloader_num_workers": workers,
        "dataloader_persistent_workers": workers > 0,
        "dataloader_pin_memory": cuda,
    }
    changes = {k: v for k, v in changes.items() if k not in explicit and getattr(training_args, k) != v}
    return dataclasses.replace(training_args, **changes) if changes else training_args


def processes_asked(command_line: Sequence[str]) -> int | None:
    """The ``--num_processes`` an ``accelerate launch`` command line asks for (None when it is not one, or asks
    nothing)."""
    words = [os.path.basename(word) for word in command_line]
    if "launch" not in words or not any(word.startswith("accelerate") for word in words[: words.index("launch")]):
        return None
    for index, word in enumerate(command_line):
        if word == "--num_processes" and index + 1 < len(command_line):
            return int(command_line[index + 1]) if command_line[index + 1].isdigit() else None
        if word.startswith("--num_processes="):
            value = word.split("=", 1)[1]
            return int(value) if value.isdigit() else None
    return None


def launcher_command_line() -> list[str]:
    """The command line of the process that started this one (Linux's /proc; empty where it cannot be read)."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def warn_if_launched_alone(world_size: int, command_line: Sequence[str] | None = None) -> str | None:
    """One warning when ``accelerate launch --num_processes N`` (N > 1) started this process alone, as it does on CPU
    without mpirun: the run trains in one process, not N. Returns the warning (None when there is nothing to say)."""
    asked = processes_asked(launcher_command_line() if command_line is None else command_line)
    if asked is None or asked <= 1 or world_size != 1:
        return None
    message = (
        f"accelerate launch asked for {asked} processes but started this one alone (on CPU accelerate fans out only "
        f"through mpirun): this run trains in 1 process. For {asked} processes on CPU: torchrun --nproc_per_node "
        f"{asked} examples/run.py ... --use_cpu true."
    )
    logger.warning(message)
    return message
