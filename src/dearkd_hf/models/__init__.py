"""The models room: CNN teachers behind one interface (:mod:`.teachers`), one view of any supported ViT student
(:mod:`.students`), and grayscale models saved taking RGB (:mod:`.grayscale`). The DearKD ViT itself is
:mod:`dearkd_hf.modeling`, kept self-contained because it ships as the Hub's remote code.
"""

from .grayscale import FOLDED_KEY, saved_as_rgb
from .students import STUDENT_FAMILIES, StudentGeometry, student_geometry
from .teacher_folder import TimmClassifier, save_timm_teacher
from .teachers import Teacher, TeacherOutput, is_timm_model, load_teacher, timm_model_name

__all__ = [
    "FOLDED_KEY",
    "STUDENT_FAMILIES",
    "StudentGeometry",
    "Teacher",
    "TimmClassifier",
    "TeacherOutput",
    "is_timm_model",
    "load_teacher",
    "save_timm_teacher",
    "saved_as_rgb",
    "student_geometry",
    "timm_model_name",
]
