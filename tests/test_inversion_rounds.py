"""Student-aware synthesis rounds (METHOD.md section 5): the competition term with the ViT student being distilled,
its effect on the images, and a dataset grown round by round that resumes to the bits of an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SIDE, image_hashes, tiny_dearkd_config, tiny_teacher

from dearkd_hf.inversion import FastInversionGenerator, InversionConfig, read_rounds, write_dataset
from dearkd_hf.inversion.losses import competition_loss
from dearkd_hf.modeling import DearKDViTForImageClassification


def config(**overrides) -> InversionConfig:
    settings = {"method": "fast", "batch_size": 6, "resolution": SIDE, "fast_steps": 2, "fast_warmup": 2}
    return InversionConfig(**{**settings, **overrides})


def vit_student(seed: int = 1) -> DearKDViTForImageClassification:
    """A tiny grayscale DearKD ViT of the tiny teacher's three labels, as run.py would train it."""
    torch.manual_seed(seed)
    return DearKDViTForImageClassification(tiny_dearkd_config(grid=4, patch=4, num_labels=3, num_channels=1)).eval()


def generator(student=None, **overrides) -> FastInversionGenerator:
    adi = {"adi_scale": 1.0} if student is not None else {}
    return FastInversionGenerator(tiny_teacher(), config(**{**adi, **overrides}), student=student)


def disagreement(generator: FastInversionGenerator, pixels: torch.Tensor, student) -> float:
    """JS(student, teacher) on images in [0, 1]: 1 - the competition term."""
    teacher = generator.teacher
    normalised = (pixels - 0.5) / 0.5  # the tiny teacher's normalisation
    with torch.no_grad():
        student_logits = generator.student.logits(
            generator.student.normalize_from(normalised, teacher.mean, teacher.std)
        )
        return 1.0 - competition_loss(student_logits, teacher.logits(normalised)).item()


def test_the_vit_student_being_distilled_competes_with_the_teacher_in_the_fast_method():
    student = generator(vit_student())
    batch = student.generate_batch(student.batch_labels(0), seed=student.batch_seed(0))
    assert 0.0 <= batch.loss_terms["adi"] <= 1.0


def test_the_competition_term_makes_images_the_student_disagrees_on():
    student = vit_student()
    settings = dict(fast_steps=20, fast_warmup=0, jitter=0, flip=False, bpid_weight=0)
    plain = FastInversionGenerator(tiny_teacher(), config(**settings))
    competing = generator(student, adi_scale=20.0, **settings)
    gains = []
    for index in range(3):
        labels, seed = plain.batch_labels(index), plain.batch_seed(index)
        without = plain.generate_batch(labels, seed=seed).pixels
        with_term = competing.generate_batch(labels, seed=seed).pixels
        assert not torch.equal(without, with_term)
        gains.append(disagreement(competing, with_term, student) - disagreement(competing, without, student))
    assert sum(gains) > 0


def test_the_meta_learned_start_does_not_depend_on_the_student():
    plain, competing = generator(), generator(vit_student())
    plain.prepare(), competing.prepare()
    for a, b in zip(plain.initialisation.state_dict().values(), competing.initialisation.state_dict().values()):
        assert torch.equal(a, b)


def test_rounds_resume_to_the_bits_of_an_uninterrupted_run_and_keep_earlier_rounds(tmp_path):
    student = vit_student()
    uninterrupted = tmp_path / "uninterrupted"
    first = write_dataset(generator(), str(uninterrupted), 12, progress=False)  # round 0: batches 0-1, no student
    whole = write_dataset(generator(student), str(uninterrupted), 30, progress=False)  # round 1: batches 2-4
    assert image_hashes(whole)[:12] == image_hashes(first)
    rounds = read_rounds(str(uninterrupted))
    assert [(r["first_batch"], r["end_batch"], r["adi_scale"]) for r in rounds] == [(0, 2, 0.0), (2, 5, 1.0)]
    assert rounds[0]["student"] is None and len(rounds[1]["student_weights_sha256"]) == 64

    # Round 1 killed after one batch, then re-run with the same student in a new process: the same bits.
    killed = tmp_path / "killed"
    write_dataset(generator(), str(killed), 12, progress=False)
    write_dataset(generator(student), str(killed), 30, max_batches=1, progress=False)
    resumed = write_dataset(generator(vit_student()), str(killed), 30, progress=False)
    assert image_hashes(resumed) == image_hashes(whole)
    assert read_rounds(str(killed)) == rounds

    # The student term changed round 1's images: a plain extension makes others.
    plain = write_dataset(generator(), str(tmp_path / "plain"), 30, progress=False)
    assert image_hashes(plain)[:12] == image_hashes(first) and image_hashes(plain)[12:] != image_hashes(whole)[12:]

    # A further round, extending a finished one with another student.
    third = write_dataset(generator(vit_student(seed=2)), str(uninterrupted), 36, progress=False)
    assert image_hashes(third)[:30] == image_hashes(whole)
    assert [(r["first_batch"], r["end_batch"]) for r in read_rounds(str(uninterrupted))] == [(0, 2), (2, 5), (5, 6)]


def test_a_killed_round_resumed_with_another_student_or_none_is_refused_before_any_synthesis(tmp_path, monkeypatch):
    folder = str(tmp_path / "run")
    write_dataset(generator(), folder, 12, progress=False)
    write_dataset(generator(vit_student()), folder, 30, max_batches=1, progress=False)
    before = json.loads((tmp_path / "run" / "shards" / "rounds.json").read_text())
    for other in (generator(), generator(vit_student(seed=2))):
        monkeypatch.setattr(other, "generate_batch", lambda *a, **k: pytest.fail("synthesis started"))
        with pytest.raises(ValueError, match=r"batch 3 of its round 1 \(batches 2-4, --student_model_name_or_path="):
            write_dataset(other, folder, 30, progress=False)
    assert json.loads((tmp_path / "run" / "shards" / "rounds.json").read_text()) == before


def test_a_student_without_adi_scale_and_adi_scale_without_a_student_are_refused():
    with pytest.raises(ValueError, match="A student was given but adi_scale=0.*--adi_scale"):
        FastInversionGenerator(tiny_teacher(), config(), student=vit_student())
    with pytest.raises(ValueError, match="adi_scale > 0 needs a student .*--student_model_name_or_path"):
        FastInversionGenerator(tiny_teacher(), config(adi_scale=1.0))
    rgb = DearKDViTForImageClassification(tiny_dearkd_config(grid=4, patch=4, num_labels=3, num_channels=3))
    with pytest.raises(ValueError, match="The student reads 3-channel images but the teacher"):
        FastInversionGenerator(tiny_teacher(), config(adi_scale=1.0), student=rgb)


def test_a_round_does_not_start_after_a_killed_one_and_older_folders_read_as_one_round(tmp_path):
    folder = str(tmp_path / "run")
    write_dataset(generator(), folder, 18, max_batches=1, progress=False)  # round 0 (3 batches) killed after one
    with pytest.raises(ValueError, match=r"batch 1 of its round 0 \(batches 0-2, no --student_model_name_or_path\)"):
        write_dataset(generator(vit_student()), folder, 30, progress=False)
    write_dataset(generator(), folder, 18, progress=False)  # finished with its own command, it can be extended
    (tmp_path / "run" / "shards" / "rounds.json").unlink()  # as a folder written before rounds were recorded
    assert read_rounds(folder) == [
        {"first_batch": 0, "end_batch": 3, "student": None, "student_weights_sha256": None, "adi_scale": 0.0}
    ]
    extended = write_dataset(generator(vit_student()), folder, 30, progress=False)
    assert len(extended) == 30 and [r["first_batch"] for r in read_rounds(folder)] == [0, 3]
