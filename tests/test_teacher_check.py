"""The teacher check: the teacher scored on training images before stage 1, logged, carded, and a weak one (no better
than the majority-class rate, within two binomial standard errors) distilled without logit KD by default."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_config, make_dataset, make_resnet_teacher, make_vit

from dearkd_hf import DearKDTrainer
from dearkd_hf.teacher_check import TeacherCheck, sample_indices, teacher_check


def test_accuracy_and_majority_rate_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 2])  # right: 0 and 2 (rows 1 and 3); label 2 three times in four
    check = teacher_check([(logits[:2], labels[:2]), (logits[2:], labels[2:])])
    assert check == TeacherCheck(accuracy=0.5, majority_rate=0.75, num_images=4)
    assert check.weak  # half right, where always answering 2 is right three times in four
    with pytest.raises(ValueError, match="teacher_check_samples"):
        teacher_check([])


def test_the_floor_is_two_standard_errors_above_the_majority_rate_by_hand():
    # Four balanced classes scored on 448 images: 0.25 + 2 * sqrt(0.25 * 0.75 / 448) = 0.25 + 2 * 0.020458 = 0.290915.
    at_majority = TeacherCheck(accuracy=0.25, majority_rate=0.25, num_images=448)
    assert at_majority.floor == pytest.approx(0.290915, abs=1e-6)
    assert at_majority.weak  # always answering one class: nothing learnt about the labels
    assert TeacherCheck(accuracy=0.29, majority_rate=0.25, num_images=448).weak  # within the noise
    assert not TeacherCheck(accuracy=0.292, majority_rate=0.25, num_images=448).weak
    # Ten classes on 450 images: 0.1 + 2 * sqrt(0.09 / 450) = 0.128284; a 30% teacher is above it.
    assert TeacherCheck(accuracy=0.128, majority_rate=0.1, num_images=450).weak
    assert not TeacherCheck(accuracy=0.30, majority_rate=0.1, num_images=450).weak
    # The floor shrinks toward the majority rate as the sample grows.
    assert TeacherCheck(0.3, 0.25, 10_000).floor < at_majority.floor < TeacherCheck(0.3, 0.25, 100).floor
    assert "weak at or below 29.1%" in at_majority.describe()


def test_the_sample_is_distinct_seeded_and_leaves_the_global_generators_alone():
    state = torch.get_rng_state()
    first = sample_indices(100, 10, seed=3)
    assert first == sample_indices(100, 10, seed=3) != sample_indices(100, 10, seed=4)
    assert len(set(first)) == 10 and all(0 <= i < 100 for i in first)
    assert sample_indices(5, 10, seed=0) == [0, 1, 2, 3, 4]
    assert torch.equal(state, torch.get_rng_state())


def always_answers(answer: int, seed: int = 1):
    """A teacher whose logits always favour class ``answer`` (the classifier's weights zeroed, its bias set)."""
    teacher = make_resnet_teacher(seed=seed)
    head = teacher.classifier[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(answer), head.out_features).float() * 10)
    return teacher


def trainer(tmp_path, teacher, **config) -> DearKDTrainer:
    values = dict(num_train_epochs=1, per_device_train_batch_size=8, logging_steps=1, save_strategy="no", seed=0)
    values["teacher_check_samples"] = 512
    config = make_config(tmp_path, **{**values, "distillation_stop_epoch": 1.0, **config})
    # Labels 0 and 1 only: a teacher that always answers 2 is right on none, below the majority-class rate.
    data = make_dataset(num_labels=2)
    return DearKDTrainer(model=make_vit(), teacher_model=teacher, args=config, train_dataset=data)


def test_a_weak_teacher_is_logged_carded_and_distilled_without_logit_kd(tmp_path, caplog):
    run = trainer(tmp_path, always_answers(2), alpha=0.5)
    with caplog.at_level("WARNING"):
        run.train()
    assert run.teacher_check.accuracy == 0.0 and run.teacher_check.weak and run.teacher_check.num_images == 32
    assert "Weak teacher: the teacher's accuracy on 32 training images" in caplog.text
    assert run.alpha == 0.0 and run.args.alpha == 0.5
    logs = run.state.log_history
    assert [log["teacher_train_accuracy"] for log in logs if "teacher_train_accuracy" in log] == [0.0]
    assert all(log["loss_kd"] >= 0 for log in logs if "loss_kd" in log)
    run.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert "a weak teacher (logit distillation was off)" in card and "alpha = 0.5 " in card  # as configured


def test_weak_teacher_warn_keeps_alpha_and_the_check_leaves_training_bit_identical(tmp_path):
    """The check draws its views under forked generators: with the teacher kept (warn), the run is the run without
    the check, weight for weight."""
    checked = trainer(tmp_path / "a", always_answers(2), weak_teacher="warn")
    checked.train()
    assert checked.teacher_check.weak and checked.alpha == 0.5
    unchecked = trainer(tmp_path / "b", always_answers(2), weak_teacher="warn", teacher_check_samples=0)
    unchecked.train()
    assert unchecked.teacher_check is None
    for (name, a), b in zip(checked.model.state_dict().items(), unchecked.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_teacher_at_the_majority_rate_is_weak(tmp_path):
    run = trainer(tmp_path, always_answers(0), teacher_check_samples=16)
    run.train()
    # 0 is this sample's most common label: always answering it scores the majority rate, and knows nothing more.
    check = run.teacher_check
    assert check.num_images == 16 and check.accuracy == check.majority_rate > 0.5
    assert check.weak and run.alpha == 0.0
    assert json.dumps(run.state.log_history)  # the accuracy is a plain float in the log


def test_a_run_without_stage_1_checks_nothing(tmp_path):
    run = trainer(tmp_path, always_answers(2), distillation_stop_epoch=0)
    run.train()
    assert run.teacher_check is None and run.alpha == 0.5
