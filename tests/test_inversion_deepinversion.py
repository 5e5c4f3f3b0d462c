"""DeepInversionGenerator on a tiny random BatchNorm CNN, and the resumable dataset writer."""

from __future__ import annotations

import os

import pytest
import torch
from datasets import ClassLabel, Image, load_from_disk
from helpers import NUM_LABELS, SIDE, image_hashes, tiny_teacher
from helpers import inversion_config as config
from torch import nn

from dearkd_hf.inversion import DeepInversionGenerator, write_dataset
from dearkd_hf.models.teachers import load_teacher


def test_a_few_iterations_lower_the_total_loss():
    generator = DeepInversionGenerator(tiny_teacher(), config(iterations=30))
    losses = []
    generator.generate_batch(generator.batch_labels(0), seed=1, callback=lambda step, loss: losses.append(loss))
    assert len(losses) == 30
    assert sum(losses[-3:]) < sum(losses[:3])


def test_the_teacher_recognises_its_targets_in_the_images():
    teacher = tiny_teacher()
    # A random teacher is neither shift- nor flip-invariant, so the augmentations would fight the objective here.
    generator = DeepInversionGenerator(teacher, config(iterations=30, batch_size=12, jitter=0, flip=False))
    batch = generator.generate_batch(generator.batch_labels(0), seed=1)

    assert batch.pixels.shape == (12, 1, SIDE, SIDE) and 0 <= batch.pixels.min() and batch.pixels.max() <= 1
    assert [image.mode for image in batch.images] == ["L"] * 12 and batch.images[0].size == (SIDE, SIDE)
    assert set(batch.loss_terms) == {"ce", "bn", "tv", "l2", "bpid_intra", "bpid_bound", "total"}
    predictions = teacher.logits((batch.pixels - 0.5) / 0.5).argmax(dim=1)
    agreement = (predictions == torch.tensor(batch.labels)).float().mean().item()
    assert agreement >= 0.75


def test_warm_start_and_three_channels_run():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    teacher = load_teacher(net.eval(), id2label={0: "a", 1: "b"})
    generator = DeepInversionGenerator(teacher, config(iterations=3, warm_start_half_resolution=True))
    batch = generator.generate_batch([0, 0, 1, 1])
    assert batch.images[0].mode == "RGB" and batch.pixels.shape == (4, 3, SIDE, SIDE)


def test_batches_are_class_balanced_reproducible_and_distinct():
    generator = DeepInversionGenerator(tiny_teacher(), config())
    assert generator.batch_labels(0) == [0, 1, 2, 0, 1, 2]  # batch_size >= 2 * classes: every class twice
    small = DeepInversionGenerator(tiny_teacher(num_labels=10), config(batch_size=4))
    assert small.batch_labels(0) == [0, 1, 0, 1] and small.batch_labels(1) == [2, 3, 2, 3]
    assert small.batch_labels(4) == [8, 9, 8, 9] and small.batch_labels(5) == [0, 1, 0, 1]

    first = generator.generate_batch(generator.batch_labels(0), seed=generator.batch_seed(0))
    again = generator.generate_batch(generator.batch_labels(0), seed=generator.batch_seed(0))
    other = generator.generate_batch(generator.batch_labels(1), seed=generator.batch_seed(1))
    assert torch.equal(first.pixels, again.pixels)
    assert not torch.equal(first.pixels, other.pixels)
    assert len({generator.batch_seed(i) for i in range(100)}) == 100

    batches = list(generator.batches(num_images=8))
    assert [len(batch) for batch in batches] == [6, 2]


def test_a_teacher_without_batchnorm_fails_at_once():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="cannot be inverted: no BatchNorm2d layers"):
        DeepInversionGenerator(net, config())


def test_adaptive_deepinversion_checks_and_uses_the_student():
    teacher = tiny_teacher()
    mismatched = tiny_teacher(seed=1, num_labels=NUM_LABELS + 1)
    with pytest.raises(ValueError, match="student predicts 4 labels but the teacher .* has 3"):
        DeepInversionGenerator(teacher, config(adi_scale=1.0), student=mismatched)
    with pytest.raises(ValueError, match="adi_scale > 0 needs a student"):
        DeepInversionGenerator(teacher, config(adi_scale=1.0))

    generator = DeepInversionGenerator(teacher, config(adi_scale=1.0), student=tiny_teacher(seed=2))
    batch = generator.generate_batch(generator.batch_labels(0))
    assert 0.0 <= batch.loss_terms["adi"] <= 1.0


def test_labels_without_a_same_class_pair_are_refused_when_bpid_is_on():
    generator = DeepInversionGenerator(tiny_teacher(), config())
    with pytest.raises(ValueError, match="at least one class twice"):
        generator.generate_batch([0, 1, 2])


def test_write_dataset_has_the_right_features_labels_and_count(tmp_path):
    generator = DeepInversionGenerator(tiny_teacher(), config())
    dataset = write_dataset(generator, str(tmp_path), num_images=8, progress=False)

    assert dataset.features["image"] == Image()
    assert dataset.features["label"] == ClassLabel(names=["class_0", "class_1", "class_2"])
    assert dataset["label"] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert len(load_from_disk(str(tmp_path))) == 8
    assert len(set(image_hashes(dataset))) == 8


def test_an_interrupted_run_resumes_without_losing_or_duplicating_images(tmp_path, monkeypatch):
    generator = DeepInversionGenerator(tiny_teacher(), config())
    write_dataset(generator, str(tmp_path), num_images=20, max_batches=1, progress=False)  # stops after 1 shard

    real_generate = generator.generate_batch
    calls = []

    def crash_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(generator, "generate_batch", crash_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(generator, str(tmp_path), num_images=20, progress=False)
    os.makedirs(tmp_path / "shards" / ".tmp-000002-halfwritten")  # what a kill during a shard write leaves
    assert sorted(os.listdir(tmp_path / "shards")) == [
        ".tmp-000002-halfwritten",
        "batch-000000",
        "batch-000001",
        "fingerprint.json",
        "rounds.json",
    ]
    monkeypatch.undo()

    dataset = write_dataset(generator, str(tmp_path), num_images=20, progress=False)
    assert len(dataset) == 20
    assert len(set(image_hashes(dataset))) == 20
    assert not any(name.startswith(".tmp") for name in os.listdir(tmp_path / "shards"))

    fresh = write_dataset(generator, str(tmp_path / "fresh"), num_images=20, progress=False)
    assert image_hashes(fresh) == image_hashes(dataset)


def test_a_larger_num_images_extends_the_dataset_with_new_images(tmp_path):
    generator = DeepInversionGenerator(tiny_teacher(), config())
    old = image_hashes(write_dataset(generator, str(tmp_path), num_images=8, progress=False))
    extended = image_hashes(write_dataset(generator, str(tmp_path), num_images=15, progress=False))
    assert extended[:8] == old
    assert len(extended) == 15 and len(set(extended)) == 15


def test_an_output_dir_of_another_configuration_is_refused(tmp_path):
    write_dataset(DeepInversionGenerator(tiny_teacher(), config()), str(tmp_path), num_images=6, progress=False)
    for changed in (config(seed=1), config(resolution=12)):
        with pytest.raises(ValueError, match="different configuration .*Use another output_dir"):
            write_dataset(DeepInversionGenerator(tiny_teacher(), changed), str(tmp_path), 6, progress=False)

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not ours")
    with pytest.raises(ValueError, match="not empty and holds no generation run"):
        write_dataset(DeepInversionGenerator(tiny_teacher(), config()), str(tmp_path / "other"), 6, progress=False)
    with pytest.raises(ValueError, match="num_images=0 must be > 0"):
        write_dataset(DeepInversionGenerator(tiny_teacher(), config()), str(tmp_path / "new"), 0, progress=False)


def test_a_non_finite_loss_stops_generation_before_its_batch_is_written(tmp_path, monkeypatch):
    generator = DeepInversionGenerator(tiny_teacher(), config())
    real_generate = generator.generate_batch
    calls = []

    def poison_second_batch(*args, **kwargs):
        calls.append(1)
        batch = real_generate(*args, **kwargs)
        if len(calls) == 2:
            batch.loss_terms = {**batch.loss_terms, "bn": float("nan"), "total": float("nan")}
        return batch

    monkeypatch.setattr(generator, "generate_batch", poison_second_batch)
    with pytest.raises(FloatingPointError, match=r"batch 1: the loss is nan \(.*bn=nan.*\).*Lower --lr"):
        write_dataset(generator, str(tmp_path), num_images=18, progress=False)
    shards = sorted(name for name in os.listdir(tmp_path / "shards") if name.startswith("batch-"))
    assert shards == ["batch-000000"]  # the finite batch before it is kept; the NaN one is never written
