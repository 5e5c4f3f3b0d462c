"""dearkd_hf: DearKD (data-efficient early knowledge distillation for ViTs) on the Hugging Face stack.

Importing it registers the DearKD ViT with ``AutoConfig`` and ``AutoModelForImageClassification``.
"""

from .alignment_pairs import AlignmentPair, default_alignment_pairs, parse_alignment_pairs, resolve_alignment_pairs
from .attention_distance import AttentionDistanceCallback, mean_attention_distance
from .base_trainer import BaseTrainer, check_process_group
from .callbacks import DistillationStopCallback
from .config import DearKDConfig
from .inversion import DeepInversionGenerator, FastInversionGenerator, InversionConfig, create_generator
from .modeling import DearKDViTConfig, DearKDViTForImageClassification
from .models.teachers import Teacher, TeacherOutput, load_teacher
from .teacher_cache import TeacherCache, write_teacher_cache
from .trainer import DearKDTrainer
from .version import __version__

__all__ = [
    "__version__",
    "AlignmentPair",
    "AttentionDistanceCallback",
    "BaseTrainer",
    "DearKDConfig",
    "DearKDTrainer",
    "DearKDViTConfig",
    "DearKDViTForImageClassification",
    "DeepInversionGenerator",
    "DistillationStopCallback",
    "FastInversionGenerator",
    "InversionConfig",
    "Teacher",
    "TeacherOutput",
    "create_generator",
    "default_alignment_pairs",
    "load_teacher",
    "mean_attention_distance",
    "parse_alignment_pairs",
    "resolve_alignment_pairs",
    "check_process_group",
    "TeacherCache",
    "write_teacher_cache",
]
