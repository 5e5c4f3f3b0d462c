"""Which ``checkpoint-N`` folder a re-run may resume from: the newest *complete* one.

A run killed while the Trainer writes a checkpoint leaves a folder that is empty or partial (no
``trainer_state.json``, a truncated weights file). Resuming from the highest-numbered folder regardless would fail on
every re-run until the user deleted it by hand; :func:`last_complete_checkpoint` skips such folders and says which
and why. The Trainer writes ``trainer_state.json`` last, so a folder whose state file parses and whose tensor files
are whole was written to the end.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Sequence

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .files import safetensors_problem

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Any one of these holds the model: transformers' weights (whole or sharded), or a sharded trainer's own layout.
_WEIGHTS = re.compile(
    r"^(model\.safetensors|pytorch_model\.bin|model\.safetensors\.index\.json|pytorch_model\.bin\.index\.json"
    r"|adapter_model\.(safetensors|bin)|pytorch_model_fsdp(_\d+)?(\.bin)?|global_step\d+)$"
)


def is_checkpoint_folder(path: str) -> bool:
    """Whether ``path`` is a Trainer checkpoint folder (``checkpoint-<step>``): a resume state, not the saved model."""
    return _CHECKPOINT.match(os.path.basename(os.path.normpath(path))) is not None


def checkpoint_problem(folder: str, required_files: Sequence[str] = ()) -> str | None:
    """Why ``folder`` cannot be resumed from (a short phrase), or None when it is a complete checkpoint.

    Complete: ``trainer_state.json`` parses, the model's weights are there, every ``.safetensors`` file is as long
    as its header says and every torch pickle is a whole zip archive, and each of ``required_files`` exists.
    """
    if not os.path.isdir(folder):
        return "it is not a folder"
    names = os.listdir(folder)
    if not names:
        return "it is empty (the run was killed while creating it)"
    for name in required_files:
        if name not in names:
            return f"it has no {name}"
    if TRAINER_STATE_NAME not in names:
        return f"it has no {TRAINER_STATE_NAME} (the run was killed while writing it)"
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME), encoding="utf-8") as f:
            state = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        return f"its {TRAINER_STATE_NAME} is not valid JSON ({error})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"its {TRAINER_STATE_NAME} has no global_step (it is not a Trainer's state)"
    if not holds_weights(folder):
        return "it holds no model weights"
    for name in sorted(names):
        path = os.path.join(folder, name)
        if name.endswith(".safetensors"):
            problem = safetensors_problem(path)
        elif name.endswith((".pt", ".pth", ".bin")) and os.path.isfile(path):
            problem = None if zipfile.is_zipfile(path) else "is not a whole torch archive"
        else:
            problem = None
        if problem is not None:
            return f"its {name} {problem}"
    return None


def check_checkpoint_slots(output_dir: str, flag: str = "--output_dir") -> None:
    """Refuse a file where a ``checkpoint-N`` folder would be saved: the run would fail only when it reaches step N."""
    for path in checkpoint_folders(output_dir):
        if not os.path.isdir(path):
            raise NotADirectoryError(
                f"{flag} {output_dir}: {os.path.basename(path)} is a file, not a checkpoint folder, and a checkpoint "
                "would be saved there; move or delete it."
            )


def checkpoint_folders(output_dir: str) -> list[str]:
    """The ``checkpoint-N`` folders in ``output_dir``, newest (highest N) first."""
    if not os.path.isdir(output_dir):
        return []
    numbered = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _CHECKPOINT.match(name))]
    return [os.path.join(output_dir, name) for _, name in sorted(numbered, reverse=True)]


def last_complete_checkpoint(output_dir: str, required_files: Sequence[str] = ()) -> str | None:
    """The newest complete checkpoint in ``output_dir`` (None if there is none), warning about each newer one skipped.

    ``required_files`` are files a checkpoint of this run must also hold (passed on to :func:`checkpoint_problem`).
    """
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder, required_files)
        if problem is None:
            return folder
        logger.warning(f"Skipping {folder}: {problem}; looking for an older complete checkpoint.")
    return None


def holds_weights(folder: str) -> bool:
    """Whether ``folder`` holds a model's weights (a checkpoint's, or a saved model's)."""
    return os.path.isdir(folder) and any(_WEIGHTS.match(name) for name in os.listdir(folder))


def clear_run(output_dir: str, extra_files: Sequence[str] = ()) -> list[str]:
    """Delete the run in ``output_dir``: its ``checkpoint-N`` folders, ``trainer_state.json``, saved weights and
    ``extra_files``. Returns the names deleted."""
    deleted = []
    for folder in checkpoint_folders(output_dir):
        shutil.rmtree(folder)
        deleted.append(os.path.basename(folder))
    for name in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []:
        if name == TRAINER_STATE_NAME or name in extra_files or _WEIGHTS.match(name):
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            deleted.append(name)
    return deleted


def finished_run(output_dir: str) -> tuple[int, int] | None:
    """``(global_step, max_steps)`` when ``output_dir`` holds a finished run, else None.

    Finished: the final model is saved in ``output_dir`` itself and the ``trainer_state.json`` saved there after
    training (``Trainer.save_state``) reached its last step. A run killed after its last checkpoint but before the
    final save is not finished: resuming it completes it.
    """
    state = _read_state(os.path.join(output_dir, TRAINER_STATE_NAME))
    if state is None or not holds_weights(output_dir):
        return None
    step, max_steps = state.get("global_step"), state.get("max_steps")
    if isinstance(step, int) and isinstance(max_steps, int) and 0 < max_steps <= step:
        return step, max_steps
    return None


def _read_state(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return state if isinstance(state, dict) else None
