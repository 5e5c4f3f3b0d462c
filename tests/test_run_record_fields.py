"""The run record holds every DearKD setting that can change a result, so a re-run with another value is refused, and
a checkpoint of another folder's run resumes only with that run's settings."""

from __future__ import annotations

import os

import pytest
from helpers import make_config, make_dataset, make_resnet_teacher, make_vit

from dearkd_hf import DearKDConfig, DearKDTrainer
from dearkd_hf.config import NOT_IN_RUN_RECORD

# For each recorded DearKDConfig field, a value other than the base config's. A field added to DearKDConfig later is
# recorded by default, and this test fails until it gets a value here (or a reason in NOT_IN_RUN_RECORD).
CHANGED = {
    "teacher_cache_views": 2,
    "distillation_type": "soft",
    "alpha": 0.3,
    "tau": 2.0,
    "teacher_labels": True,
    "beta": 0.5,
    "alignment_pairs": ["1:resnet.embedder"],
    "beta_schedule": "constant",
    "align_ratio": 0.5,
    "align_conflicts": "project",
    "label_loss_heads": "each_head",
    "distillation_stop_epoch": 1.5,
    "distillation_stop_fraction": 0.5,
    "repeated_augmentations": 2,
    "teacher_check_samples": 64,
    "weak_teacher": "warn",
}


def config(tmp_path, **overrides) -> DearKDConfig:
    values = dict(num_train_epochs=2, per_device_train_batch_size=8, save_strategy="no", seed=0)
    output_dir = overrides.pop("output_dir", tmp_path / "run")
    return make_config(output_dir, **{**values, "distillation_stop_epoch": 1.0, **overrides})


def trainer(args: DearKDConfig) -> DearKDTrainer:
    return DearKDTrainer(
        model=make_vit(), teacher_model=make_resnet_teacher(), args=args, train_dataset=make_dataset()
    )


def folder_with_run(tmp_path) -> DearKDTrainer:
    """A folder holding a checkpoint and the record of a run made with the base config."""
    first = trainer(config(tmp_path))
    first._record_run()
    os.makedirs(os.path.join(first.args.output_dir, "checkpoint-1"))
    return first


def test_every_dearkd_field_is_recorded_or_excused():
    own = [
        name for name in DearKDConfig.__dataclass_fields__ if name not in DearKDConfig.__mro__[1].__dataclass_fields__
    ]
    assert sorted(CHANGED) == sorted(name for name in own if name not in NOT_IN_RUN_RECORD)
    assert all(reason.strip() for reason in NOT_IN_RUN_RECORD.values())
    assert "align_ratio" in CHANGED  # the knob the hand-written list left out


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_a_rerun_with_another_value_is_refused_naming_the_field(tmp_path, field):
    folder_with_run(tmp_path)
    rerun = trainer(config(tmp_path, **{field: CHANGED[field]}))
    with pytest.raises(ValueError, match=rf"holds a run made with other settings .*distillation\.{field} "):
        rerun.check_output_folder()


def test_a_rerun_with_the_same_settings_resumes(tmp_path):
    folder_with_run(tmp_path)
    trainer(config(tmp_path)).check_output_folder()  # no error: the same run


@pytest.mark.parametrize("field", ["teacher_model_name_or_path", "save_at_distillation_stop"])
def test_settings_that_cannot_change_a_result_are_not_recorded(tmp_path, field):
    folder_with_run(tmp_path)
    value = {"teacher_model_name_or_path": "elsewhere/teacher", "save_at_distillation_stop": True}[field]
    trainer(config(tmp_path, **{field: value})).check_output_folder()


def test_resuming_another_folders_checkpoint_with_other_settings_is_refused(tmp_path):
    first = folder_with_run(tmp_path)
    checkpoint = os.path.join(first.args.output_dir, "checkpoint-1")
    other = trainer(config(tmp_path, output_dir=str(tmp_path / "other"), alpha=0.9))
    with pytest.raises(ValueError, match=r"that checkpoint's run was made with other settings .*distillation\.alpha"):
        other._check_checkpoint_run(checkpoint)
    same = trainer(config(tmp_path, output_dir=str(tmp_path / "same")))
    same._check_checkpoint_run(checkpoint)  # the same settings: resuming continues that run
