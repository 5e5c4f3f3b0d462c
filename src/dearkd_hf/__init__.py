"""dearkd_hf: DearKD (data-efficient early knowledge distillation for ViTs) on the Hugging Face stack."""

from .alignment import AlignmentPair, default_alignment_pairs, parse_alignment_pairs
from .callbacks import DistillationStopCallback
from .config import DearKDConfig
from .teachers import Teacher, TeacherOutput, load_teacher
from .trainer import DearKDTrainer

__version__ = "0.1.0"

__all__ = [
    "AlignmentPair",
    "DearKDConfig",
    "DearKDTrainer",
    "DistillationStopCallback",
    "Teacher",
    "TeacherOutput",
    "default_alignment_pairs",
    "load_teacher",
    "parse_alignment_pairs",
]
