"""SeededBatches: each training batch fetched under random generators seeded by ``(seed, epoch, its example
indices)``, so a batch's augmentation never depends on when the data loader fetches it (exact mid-epoch resume)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class SeededBatches:
    """Fetch each batch under torch/numpy/python generators seeded by ``(seed, epoch, example indices)``.

    ``dataset()`` wraps a map-style dataset, whose ``__getitems__`` saves the global random states and seeds them;
    ``collator()`` wraps the collate function, which restores them once the batch is built (mixup included). The
    epoch is read from the trainer's ``state``; both wrappers are picklable for data-loader workers.
    """

    def __init__(self, seed: int, state: Any):
        self.seed = seed
        self.state = state
        self._saved: tuple | None = None

    def dataset(self, dataset: Any) -> torch.utils.data.Dataset:
        return _SeededDataset(dataset, self)

    def collator(self, collate_fn: Any) -> Any:
        return _SeededCollator(collate_fn, self)

    def begin(self, indices: Sequence[int]) -> None:
        epoch = int((self.state.epoch or 0.0) + 1e-6)
        digest = hashlib.sha256(repr((self.seed, epoch, [int(i) for i in indices])).encode()).digest()
        batch_seed = int.from_bytes(digest[:4], "little")
        self._saved = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
        torch.manual_seed(batch_seed)
        np.random.seed(batch_seed)
        random.seed(batch_seed)

    def end(self) -> None:
        if self._saved is not None:
            torch_state, numpy_state, python_state = self._saved
            torch.random.set_rng_state(torch_state)
            np.random.set_state(numpy_state)
            random.setstate(python_state)
            self._saved = None


class _SeededDataset(torch.utils.data.Dataset):
    def __init__(self, dataset: Any, batches: SeededBatches):
        self.inner = dataset
        self.batches = batches

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> Any:
        return self.inner[index]

    def __getitems__(self, indices: list[int]) -> list:
        self.batches.begin(indices)
        try:
            if hasattr(self.inner, "__getitems__"):
                return self.inner.__getitems__(indices)
            return [self.inner[i] for i in indices]
        except BaseException:
            self.batches.end()
            raise


class _SeededCollator:
    def __init__(self, collate_fn: Any, batches: SeededBatches):
        self.collate_fn = collate_fn
        self.batches = batches

    def __call__(self, examples: list) -> Any:
        try:
            return self.collate_fn(examples)
        finally:
            self.batches.end()
