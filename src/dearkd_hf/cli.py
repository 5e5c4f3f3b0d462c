"""What the example scripts share on the command line: flags or one .json/.yaml file, and config overrides."""

from __future__ import annotations

import ast
import difflib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from transformers import HfArgumentParser, PretrainedConfig, TrainingArguments

from .checkpoints import checkpoint_problem, last_complete_checkpoint

logger = logging.getLogger(__name__)

# What bad input raises in dearkd_hf and its scripts; printed as one line by `run_main`, anything else as a traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)
TRACEBACK_ENV = "DEARKD_TRACEBACK"


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
