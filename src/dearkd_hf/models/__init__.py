"""The models room: CNN teachers behind one interface (:mod:`.teachers`), one view of any supported ViT student
(:mod:`.students`), and grayscale models saved taking RGB (:mod:`.grayscale`). The DearKD ViT itself is
:mod:`dearkd_hf.modeling`, kept self-contained because it ships as the Hub's remote code.
"""

from .students import StudentGeometry, student_geometry
from .teachers import Teacher, TeacherOutput, load_teacher

__all__ = ["StudentGeometry", "Teacher", "TeacherOutput", "load_teacher", "student_geometry"]
