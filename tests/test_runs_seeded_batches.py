"""runs/seeded_batches.py: a batch's random draws depend on (seed, epoch, its example indices) alone, never on when
or in which order it is fetched, and the global generators are given back as they were."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dearkd_hf.runs.seeded_batches import SeededBatches


class Noisy(torch.utils.data.Dataset):
    """Each example draws from the three global generators, as an augmentation does."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple:
        return index, torch.rand(()).item(), float(np.random.rand()), random.random()


def fetch(batches: SeededBatches, indices: list[int]) -> list:
    """One batch as a data loader fetches it: the dataset's __getitems__, then the collator."""
    examples = batches.dataset(Noisy()).__getitems__(indices)
    return batches.collator(list)(examples)


def test_a_batch_draws_the_same_whenever_it_is_fetched():
    batches = SeededBatches(seed=0)
    first = fetch(batches, [3, 1, 4])
    torch.manual_seed(123)  # other global states, other batches fetched before it
    fetch(batches, [0, 2])
    assert fetch(batches, [3, 1, 4]) == first
    assert fetch(SeededBatches(seed=0), [3, 1, 4]) == first
    assert fetch(SeededBatches(seed=1), [3, 1, 4]) != first
    reordered = fetch(batches, [1, 3, 4])  # the indices in their order seed the batch
    assert {example[1] for example in reordered}.isdisjoint(example[1] for example in first)
    assert len({example[1] for example in first}) == 3  # each example its own draws


def test_the_epoch_is_the_integer_part_of_the_trainers():
    batches = SeededBatches(seed=0)
    epoch0 = fetch(batches, [0, 1])
    batches.set_epoch(0.75)
    assert fetch(batches, [0, 1]) == epoch0
    batches.set_epoch(1.6)
    epoch1 = fetch(batches, [0, 1])
    assert epoch1 != epoch0
    assert fetch(SeededBatches(seed=0, epoch=1.0), [0, 1]) == epoch1
    batches.set_epoch(1.9999999)  # a float state's epoch at the boundary, just short of 2
    assert fetch(batches, [0, 1]) == fetch(SeededBatches(seed=0, epoch=2), [0, 1])
    batches.set_epoch(None)
    assert fetch(batches, [0, 1]) == epoch0


def test_the_global_generators_are_given_back():
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    fetch(SeededBatches(seed=0), [0, 1, 2])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_a_failing_fetch_gives_the_generators_back_too():
    class Broken(Noisy):
        def __getitem__(self, index: int) -> tuple:
            raise KeyError(index)

    batches = SeededBatches(seed=0)
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    with pytest.raises(KeyError):
        batches.dataset(Broken()).__getitems__([0, 1])
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_data_loader_gives_the_same_batches_whatever_the_global_seed():
    def epoch_batches(global_seed: int) -> list:
        torch.manual_seed(global_seed)
        batches = SeededBatches(seed=0)
        loader = DataLoader(batches.dataset(Noisy()), batch_size=4, collate_fn=batches.collator(list))
        return list(loader)

    first = epoch_batches(0)
    assert [[example[0] for example in batch] for batch in first] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert epoch_batches(1) == first


def test_the_wrappers_pickle_for_loader_workers():
    batches = SeededBatches(seed=0, epoch=1)
    dataset = pickle.loads(pickle.dumps(batches.dataset(Noisy())))
    collator = pickle.loads(pickle.dumps(batches.collator(list)))
    assert len(dataset) == 8 and dataset[2][0] == 2
    assert collator(dataset.__getitems__([3, 1])) == fetch(batches, [3, 1])
