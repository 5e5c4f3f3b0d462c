"""The runs room: what makes a training run safe to kill and re-run. The output folder's lock (:mod:`.lock`) and run
record (:mod:`.record`), complete checkpoints and exact resume (:mod:`.checkpoints`, :mod:`.seeded_batches`),
finite losses and weights (:mod:`.finite_checks`), resumable dataset shards (:mod:`.shards`) and atomic files
(:mod:`.files`). Imports nothing from the rest of the package.
"""

from .checkpoints import check_checkpoint_slots, last_complete_checkpoint
from .finite_checks import check_finite_loss, require_finite
from .lock import LOCK_FILE, check_writable_folder, output_folder_lock

__all__ = [
    "LOCK_FILE",
    "check_checkpoint_slots",
    "check_finite_loss",
    "check_writable_folder",
    "last_complete_checkpoint",
    "output_folder_lock",
    "require_finite",
]
