"""FastInversionGenerator (the amortised ``fast`` method) on a tiny random BatchNorm CNN, and its resumable dataset."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch
from helpers import SIDE, image_hashes, tiny_teacher
from torch import nn

from dearkd_hf.inversion import (
    DeepInversionGenerator,
    FastInversionGenerator,
    InversionConfig,
    create_generator,
    write_dataset,
)
from dearkd_hf.inversion.fast import INIT_FILE


def config(**overrides) -> InversionConfig:
    settings = {"method": "fast", "batch_size": 6, "resolution": SIDE, "fast_steps": 2, "fast_warmup": 2}
    return InversionConfig(**{**settings, **overrides})


def first_step_loss(generator: FastInversionGenerator) -> float:
    losses = []
    generator.generate_batch(generator.batch_labels(0), seed=1, callback=lambda step, loss: losses.append(loss))
    return losses[0]


def test_the_loss_falls_over_a_batch_and_the_meta_learned_start_is_better():
    teacher = tiny_teacher()
    generator = create_generator(teacher, config(fast_steps=30, fast_warmup=0, jitter=0, flip=False))
    assert isinstance(generator, FastInversionGenerator)
    losses = []
    generator.generate_batch(generator.batch_labels(0), seed=1, callback=lambda step, loss: losses.append(loss))
    assert len(losses) == 30 and sum(losses[-3:]) < sum(losses[:3])

    # The amortisation: after warm-up tasks, a new batch starts from a lower loss than from a random generator. (How
    # much lower depends on the CPU's kernels: 5% on this project's current development machine, over 20% before.)
    cold = first_step_loss(FastInversionGenerator(teacher, config(fast_warmup=0, jitter=0, flip=False)))
    warm = first_step_loss(FastInversionGenerator(teacher, config(fast_warmup=20, jitter=0, flip=False)))
    assert warm < cold


def test_the_teacher_recognises_its_targets_in_the_images():
    teacher = tiny_teacher()
    # As for DeepInversion's test: the random teacher is neither shift- nor flip-invariant.
    generator = FastInversionGenerator(
        teacher, config(batch_size=12, fast_warmup=20, fast_steps=20, jitter=0, flip=False)
    )
    agreement = []
    for index in range(3):
        batch = generator.generate_batch(generator.batch_labels(index), seed=generator.batch_seed(index))
        assert batch.pixels.shape == (12, 1, SIDE, SIDE) and 0 <= batch.pixels.min() and batch.pixels.max() <= 1
        assert set(batch.loss_terms) == {"ce", "bn", "tv", "l2", "bpid_intra", "bpid_bound", "total"}
        predictions = teacher.logits((batch.pixels - 0.5) / 0.5).argmax(dim=1)
        agreement.append((predictions == torch.tensor(batch.labels)).float().mean().item())
    assert sum(agreement) / len(agreement) >= 0.75


def test_batches_are_reproducible_distinct_and_of_any_side():
    generator = FastInversionGenerator(tiny_teacher(), config())
    first = generator.generate_batch(generator.batch_labels(0), seed=generator.batch_seed(0))
    again = FastInversionGenerator(tiny_teacher(), config())
    assert torch.equal(first.pixels, again.generate_batch(again.batch_labels(0), seed=again.batch_seed(0)).pixels)
    other = generator.generate_batch(generator.batch_labels(1), seed=generator.batch_seed(1))
    assert not torch.equal(first.pixels, other.pixels)
    assert [len(batch) for batch in generator.batches(num_images=8)] == [6, 2]

    odd = FastInversionGenerator(tiny_teacher(), config(resolution=13))  # not a multiple of the 4x upsampling
    assert odd.generate_batch([0, 0, 1, 1]).pixels.shape == (4, 1, 13, 13)


def test_resume_and_extend_give_exactly_the_images_of_one_uninterrupted_run(tmp_path, monkeypatch):
    generator = FastInversionGenerator(tiny_teacher(), config())
    write_dataset(generator, str(tmp_path / "run"), num_images=20, max_batches=1, progress=False)  # as if killed
    assert sorted(os.listdir(tmp_path / "run" / "shards")) == [
        "batch-000000",
        INIT_FILE,
        "fingerprint.json",
        "rounds.json",
    ]

    # A new process resumes: it loads the saved initialisation instead of learning it again.
    resumed = FastInversionGenerator(tiny_teacher(), config())
    monkeypatch.setattr(resumed, "meta_learn", lambda *a, **k: pytest.fail("the initialisation was learned again"))
    dataset = write_dataset(resumed, str(tmp_path / "run"), num_images=20, progress=False)
    monkeypatch.undo()
    assert len(dataset) == 20 and len(set(image_hashes(dataset))) == 20

    fresh = write_dataset(
        FastInversionGenerator(tiny_teacher(), config()), str(tmp_path / "fresh"), 20, progress=False
    )
    assert image_hashes(fresh) == image_hashes(dataset)

    extended = write_dataset(
        FastInversionGenerator(tiny_teacher(), config()), str(tmp_path / "run"), 27, progress=False
    )
    assert image_hashes(extended)[:20] == image_hashes(dataset)
    assert len(extended) == 27 and len(set(image_hashes(extended))) == 27


def test_an_output_dir_of_the_other_method_is_refused(tmp_path):
    write_dataset(
        DeepInversionGenerator(tiny_teacher(), InversionConfig(iterations=1, batch_size=6, resolution=SIDE)),
        str(tmp_path),
        num_images=6,
        progress=False,
    )
    with pytest.raises(ValueError, match="different configuration .*method: 'deepinversion' there, 'fast' now"):
        write_dataset(FastInversionGenerator(tiny_teacher(), config()), str(tmp_path), 6, progress=False)


def test_bad_input_fails_before_any_synthesis():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="cannot be inverted: no BatchNorm2d layers"):
        create_generator(net, config())
    with pytest.raises(ValueError, match="FastInversionGenerator runs InversionConfig\\(method='fast'\\)"):
        FastInversionGenerator(tiny_teacher(), InversionConfig(resolution=SIDE))
    with pytest.raises(ValueError, match="DeepInversionGenerator runs InversionConfig\\(method='deepinversion'\\)"):
        DeepInversionGenerator(tiny_teacher(), config())
    with pytest.raises(ValueError, match="at least one class twice"):
        FastInversionGenerator(tiny_teacher(), config()).generate_batch([0, 1, 2])


def test_progress_moves_at_every_step_and_reports_the_warm_up(tmp_path, capsys):
    """The warm-up (2 tasks x 2 steps) has its own bar; the generation bar counts steps (2 batches x 2 steps), not
    batches; the initialisation is saved as safetensors."""
    write_dataset(FastInversionGenerator(tiny_teacher(), config()), str(tmp_path / "run"), num_images=12)
    err = capsys.readouterr().err
    assert "Meta-learning the generator's start" in err and "Generating 2 batches" in err
    assert err.count("4/4") >= 2 and "batch 1, loss" in err
    assert INIT_FILE.endswith(".safetensors")
    assert set(safetensors.torch.load_file(tmp_path / "run" / "shards" / INIT_FILE)) == set(
        FastInversionGenerator(tiny_teacher(), config())._new_network().state_dict()
    )
