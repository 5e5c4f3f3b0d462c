"""SeededBatches: each training batch fetched under random generators seeded by ``(seed, epoch, its example
indices)``, so a batch's augmentation never depends on when the data loader fetches it (exact mid-epoch resume),
nor on which loader worker fetches it."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch


class SeededBatches:
    """Fetch each batch under torch/numpy/python generators seeded by ``(seed, epoch, example indices)``.

    ``dataset()`` wraps a map-style dataset, whose ``__getitems__`` saves the global random states and seeds them;
    ``collator()`` wraps the collate function, which restores them once the batch is built (mixup included). Both
    wrappers are picklable for data-loader workers. The epoch is set by :meth:`set_epoch` at each epoch's start,
    before its batches are requested, into a tensor in shared memory: loader workers kept alive across epochs
    (``dataloader_persistent_workers``) read it there, as the main process does.
    """

    def __init__(self, seed: int, epoch: float = 0.0):
        self.seed = seed
        self._saved: tuple | None = None
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.set_epoch(epoch)

    def set_epoch(self, epoch: float | None) -> None:
        """Seed the batches requested from now on with ``epoch`` (a trainer state's, fractional: its integer part)."""
        self._epoch.fill_(int((epoch or 0.0) + 1e-6))

    def dataset(self, dataset: Any) -> torch.utils.data.Dataset:
        return _SeededDataset(dataset, self)

    def collator(self, collate_fn: Any) -> Any:
        return _SeededCollator(collate_fn, self)

    def begin(self, indices: Sequence[int]) -> None:
        epoch = int(self._epoch)
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


def items_at(dataset: Any, indices: Sequence[int]) -> list:
    """The items of ``dataset`` at ``indices``: through its ``__getitems__`` when it has one (a ``datasets.Dataset``
    transforms them as one batch, as the data loader fetches them), else one by one."""
    many = getattr(dataset, "__getitems__", None)
    return many(list(indices)) if many is not None else [dataset[i] for i in indices]


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
            return items_at(self.inner, indices)
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


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run a block without touching the torch, Python and NumPy random states seen by training."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
