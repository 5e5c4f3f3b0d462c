"""What the example scripts share on the command line: flags or one .json/.yaml file, and config overrides."""

from __future__ import annotations

import ast
import json
import os
import re
from typing import Any

from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint


def parse_script_args(parser: HfArgumentParser, argv: list[str]) -> tuple:
    """Command-line flags, or a single .json/.yaml file holding them (as transformers' example scripts accept)."""
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


def resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """--resume_from_checkpoint, else the last checkpoint in --output_dir, so that a re-run continues a killed one."""
    if training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    if os.path.isdir(training_args.output_dir):
        return get_last_checkpoint(training_args.output_dir)
    return None
