"""What the example scripts share: the command line (:mod:`.cli`), the checks of their training arguments, and the
student built from model flags (:mod:`.model_arguments`). Scripts import from here, :mod:`dearkd_hf` and its rooms.
"""

from ..config import check_training_arguments
from .cli import (
    check_config_overrides,
    explicit_argument_names,
    parse_config_overrides,
    parse_script_args,
    resume_checkpoint,
    run_main,
    warn_if_launched_alone,
    with_loader_defaults,
)
from .model_arguments import ModelArguments, build_image_processor, build_student, student_inputs

__all__ = [
    "ModelArguments",
    "build_image_processor",
    "build_student",
    "check_config_overrides",
    "check_training_arguments",
    "explicit_argument_names",
    "parse_config_overrides",
    "parse_script_args",
    "resume_checkpoint",
    "run_main",
    "student_inputs",
    "warn_if_launched_alone",
    "with_loader_defaults",
]
