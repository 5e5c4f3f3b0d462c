"""What leaves the machine on ``push_to_hub``: the student alone (weights, config, processor, card, modeling code).

The Trainer uploads its output folder (and, with ``hub_strategy`` ``checkpoint``/``all_checkpoints``, each checkpoint
folder) whole, but for ``_*`` and ``checkpoint-*``: with them ``training_args.bin`` (a pickle holding local paths),
``trainer_state.json``, the result files, TensorBoard's ``runs/`` and, from a checkpoint, the aligners, optimizer,
scheduler and random state. It has no hook to choose the files, so :func:`student_files_only` gives its uploads an
allow-list for as long as the push runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import transformers.trainer as transformers_trainer

# The student as from_pretrained loads it: weights (whole or sharded), config, processor, card, remote code.
STUDENT_FILES = (
    "config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
    "processor_config.json",
    "README.md",
    "*.py",
)


class _AllowOnly:
    """An ``HfApi`` whose ``upload_folder`` sends only the files matching ``patterns``."""

    def __init__(self, api: Any, patterns: Sequence[str]):
        self._api = api
        self._patterns = list(patterns)

    def upload_folder(self, **kwargs: Any) -> Any:
        return self._api.upload_folder(**{**kwargs, "allow_patterns": self._patterns})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)


@contextlib.contextmanager
def student_files_only(patterns: Sequence[str] = STUDENT_FILES) -> Iterator[None]:
    """While inside, the Trainer's uploads (``transformers.trainer.hf_api().upload_folder``) send only ``patterns``."""
    shared = transformers_trainer.hf_api
    transformers_trainer.hf_api = lambda: _AllowOnly(shared(), patterns)
    try:
        yield
    finally:
        transformers_trainer.hf_api = shared
