"""DearKDTrainer end to end on tiny models: stages, teacher use, resume, saving, gradient accumulation, bad input."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import TINY_VIT, make_config, make_dataset, make_resnet_teacher, make_vit
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, TrainerCallback, ViTImageProcessor

from dearkd_hf import DearKDConfig, DearKDTrainer
from dearkd_hf.alignment import ALIGNERS_FILE
from dearkd_hf.data.collators import MixupCollator, collate_fn

STAGES = ["resnet.encoder.stages.0", "resnet.encoder.stages.1"]


def trainer_config(tmp_path, **overrides) -> DearKDConfig:
    """helpers.make_config with this file's run: two epochs (stage 1 in the first), a log per step, no saves."""
    values = dict(
        num_train_epochs=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        distillation_stop_epoch=1.0,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return make_config(tmp_path, **values)


def make_trainer(tmp_path, student=None, teacher=None, dataset=None, **config) -> DearKDTrainer:
    return DearKDTrainer(
        model=student if student is not None else make_vit(),
        teacher_model=teacher if teacher is not None else make_resnet_teacher(),
        args=trainer_config(tmp_path, **config),
        train_dataset=dataset if dataset is not None else make_dataset(),
        eval_dataset=make_dataset(8, seed=5),
    )


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def train_losses(trainer) -> dict[int, float]:
    return {log["step"]: log["loss"] for log in trainer.state.log_history if "loss" in log}


def test_teacher_runs_every_stage1_step_never_after_switch_nor_in_eval(tmp_path):
    teacher = make_resnet_teacher()
    trainer = make_trainer(tmp_path, teacher=teacher, eval_strategy="steps", eval_steps=1)
    calls = count_calls(teacher)
    trainer.evaluate()
    assert calls[0] == 0
    trainer.train()
    assert calls[0] == 4  # 32 images / batch 8 = 4 stage-1 steps in epoch 1, none in epoch 2
    stages = [log["stage"] for log in trainer.state.log_history if "loss" in log]
    assert stages == [1.0] * 4 + [2.0] * 4
    assert trainer.teacher is None  # released at the switch
    parts = [log for log in trainer.state.log_history if "loss_align" in log]
    assert len(parts) == 4 and all(log["loss_kd"] > 0 and log["loss_align"] > 0 for log in parts)
    assert any(log.get("distillation_stopped_at_epoch") == 1.0 for log in trainer.state.log_history)


def test_teacher_memory_is_freed_at_the_switch_while_training_goes_on(tmp_path):
    """Nothing keeps the teacher alive past the switch, so its (device) memory goes back before stage 2's steps."""
    teacher = make_resnet_teacher()
    weight = weakref.ref(next(teacher.parameters()))
    trainer = make_trainer(tmp_path, teacher=teacher)
    del teacher
    seen = []

    class Probe(TrainerCallback):  # runs after DistillationStopCallback in every event
        def on_step_begin(self, args, state, control, **kwargs):
            gc.collect()
            seen.append((state.global_step, trainer.stage, weight() is not None))

    trainer.add_callback(Probe())
    trainer.train()
    assert seen[:4] == [(step, 1, True) for step in range(4)]
    assert seen[4:] == [(step, 2, False) for step in range(4, 8)]


def test_default_stop_epoch_is_80_percent_of_epochs(tmp_path):
    teacher = make_resnet_teacher()
    trainer = make_trainer(tmp_path, teacher=teacher, distillation_stop_epoch=None, num_train_epochs=5)
    calls = count_calls(teacher)
    trainer.train()
    assert trainer.distillation_stop.stop_epoch == pytest.approx(4.0)
    assert calls[0] == 16


def test_stop_fraction_sets_the_default_stop_epoch(tmp_path):
    teacher = make_resnet_teacher()
    trainer = make_trainer(
        tmp_path, teacher=teacher, distillation_stop_epoch=None, distillation_stop_fraction=0.5, num_train_epochs=4
    )
    calls = count_calls(teacher)
    trainer.train()
    assert trainer.distillation_stop.stop_epoch == pytest.approx(2.0)
    assert calls[0] == 8  # 4 steps per epoch, two epochs distilling


def test_teacher_sees_batches_renormalised_to_its_statistics(tmp_path):
    teacher = make_resnet_teacher()
    seen = []
    teacher.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    processor = ViTImageProcessor(image_mean=[0.5], image_std=[0.25])
    trainer = DearKDTrainer(
        model=make_vit(),
        teacher_model=teacher,
        args=trainer_config(tmp_path, max_steps=1),
        train_dataset=make_dataset(8),
        processing_class=processor,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(trainer.model.train(), batch)
    t_mean, t_std = trainer.teacher.mean[0], trainer.teacher.std[0]
    expected = (batch["pixel_values"] * 0.25 + 0.5 - t_mean) / t_std
    assert torch.allclose(seen[-1], expected, atol=1e-6)


def run_with_checkpoints(tmp_path):
    trainer = make_trainer(tmp_path, save_strategy="steps", save_steps=2)
    trainer.train()
    return trainer


@pytest.mark.parametrize("checkpoint, stage_after", [(2, 1), (6, 2)])
def test_resume_lands_in_the_right_stage_and_matches_uninterrupted_run(tmp_path, checkpoint, stage_after):
    reference = run_with_checkpoints(tmp_path / "full")
    ckpt = tmp_path / "full" / f"checkpoint-{checkpoint}"
    assert (ckpt / ALIGNERS_FILE).is_file()
    assert not [k for k in load_file(ckpt / "model.safetensors") if "aligner" in k]

    teacher = make_resnet_teacher()
    resumed = make_trainer(tmp_path / "resumed", student=make_vit(seed=123), teacher=teacher)
    calls = count_calls(teacher)
    resumed.train(resume_from_checkpoint=str(ckpt))
    logs = [log for log in resumed.state.log_history if "loss" in log and log["step"] > checkpoint]
    assert logs[0]["stage"] == stage_after
    assert calls[0] == (4 - checkpoint if stage_after == 1 else 0)
    expected = train_losses(reference)
    for step, loss in train_losses(resumed).items():
        if step > checkpoint:
            assert loss == pytest.approx(expected[step], rel=1e-4, abs=1e-5), step
    key = "distillation_stopped_at_epoch"
    assert {log[key] for log in resumed.state.log_history if key in log} == {1.0}  # not the resumed epoch 1.5


def test_resume_restores_aligners_from_checkpoint(tmp_path):
    run_with_checkpoints(tmp_path / "full")
    ckpt = tmp_path / "full" / "checkpoint-2"
    fresh = make_trainer(tmp_path / "fresh", student=make_vit(seed=7))
    fresh._load_from_checkpoint(str(ckpt))
    saved = load_file(ckpt / ALIGNERS_FILE)
    restored = fresh.aligners.head.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)


class SimulatedKill(BaseException):
    """What a SIGKILL does to the saving code: it stops, whatever it was doing."""


def test_a_kill_while_writing_the_aligners_leaves_no_checkpoint_that_looks_complete(tmp_path, monkeypatch):
    """The aligners are part of the checkpoint: a kill while they are written leaves neither a (partial) aligners
    file under its name nor the trainer_state.json that marks a checkpoint as written."""

    def killed_while_writing(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x08\x00\x00")  # the first bytes of a file, then the kill
        raise SimulatedKill

    monkeypatch.setattr(safetensors.torch, "save_file", killed_while_writing)
    trainer = make_trainer(tmp_path, save_strategy="steps", save_steps=2)
    with pytest.raises(SimulatedKill):
        trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert not (checkpoint / "trainer_state.json").exists()
    assert not (checkpoint / ALIGNERS_FILE).exists()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_refuses_a_checkpoint_without_whole_aligners(tmp_path, damage):
    """A stage-1 resume never starts with fresh aligners: a checkpoint that cannot restore them is refused."""
    run_with_checkpoints(tmp_path / "full")
    aligners = tmp_path / "full" / "checkpoint-2" / ALIGNERS_FILE
    if damage == "missing":
        aligners.unlink()
    else:
        aligners.write_bytes(aligners.read_bytes()[: aligners.stat().st_size // 2])
    resumed = make_trainer(tmp_path / "resumed", student=make_vit(seed=123))
    with pytest.raises(ValueError, match=r"checkpoint-2.*aligners\.safetensors"):
        resumed.train(resume_from_checkpoint=str(aligners.parent))
    assert resumed.state.global_step == 0
    with pytest.raises(ValueError, match="checkpoint-2 cannot restore the aligners"):
        resumed._load_from_checkpoint(str(aligners.parent))  # the aligners' own check, behind the Trainer's


def test_save_model_holds_only_the_student_and_reloads(tmp_path):
    student = make_vit()
    trainer = make_trainer(tmp_path, student=student, max_steps=2)
    trainer.train()
    out = tmp_path / "student"
    trainer.save_model(str(out))
    keys = load_file(out / "model.safetensors").keys()
    assert not [k for k in keys if "aligner" in k or k.startswith("resnet")]
    assert not hasattr(student, "dearkd_aligners")  # the user's student is left as it came
    reloaded, info = AutoModelForImageClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixels = torch.randn(2, 1, 16, 16)
    rgb = pixels.expand(
        -1, 3, -1, -1
    )  # a grayscale ViT is saved taking RGB (dearkd_hf.models.grayscale): the same output
    with torch.no_grad():
        assert torch.allclose(reloaded.eval()(rgb).logits, student.eval()(pixels).logits, atol=1e-5)


def test_stage2_log_lines_carry_no_stage1_loss_components(tmp_path):
    """A logging window open at the switch (steps 4-6 of 8, stop after step 4): its stage-1 step gets a line of its
    own at the switch, and the stage-2 line has only the label loss, never the teacher's terms."""
    trainer = make_trainer(tmp_path, logging_steps=3)
    trainer.train()
    lines = [log for log in trainer.state.log_history if "loss" in log]
    assert [(log["step"], log["stage"]) for log in lines] == [(3, 1.0), (4, 1.0), (6, 2.0)]
    assert all({"loss_kd", "loss_align", "beta"} <= line.keys() for line in lines[:2])
    assert not {"loss_kd", "loss_align", "beta"} & lines[2].keys() and "loss_ce" in lines[2]
    assert not [key for line in lines for key in line if key.startswith("_")]


def test_save_model_writes_the_card_push_to_hub_writes(tmp_path):
    """In the Trainer API, save_model() leaves the student's model card beside it: the card push_to_hub writes (what
    create_model_card was told, remembered), with the student described as it is (a ViT: one class token)."""
    trainer = make_trainer(tmp_path / "run", max_steps=1)
    trainer.train()
    trainer.create_model_card(dataset="zalando-datasets/fashion_mnist", license="apache-2.0")
    trainer.save_model(str(tmp_path / "student"))
    card = (tmp_path / "student" / "README.md").read_text()
    assert card == (tmp_path / "run" / "README.md").read_text()
    assert "license: apache-2.0" in card and "zalando-datasets/fashion_mnist" in card
    assert "A vision transformer with a class token" in card and "trust_remote_code" not in card
    assert "- learning_rate: " in card and str(tmp_path) not in card


def test_gradient_accumulation_equals_larger_batch(tmp_path):
    # A fixed alignment weight: the balanced one is set per micro-batch, from that micro-batch's losses.
    common = dict(max_steps=1, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0)
    common["beta_schedule"] = "constant"
    dataset = make_dataset(8)
    params = []
    for batch, accumulation in [(4, 2), (8, 1)]:
        student = make_vit(seed=3)
        trainer = make_trainer(
            tmp_path / f"b{batch}",
            student=student,
            dataset=dataset,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            **common,
        )
        trainer.train()
        params.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    initial = torch.cat([p.detach().flatten() for p in make_vit(seed=3).parameters()])
    assert not torch.allclose(params[0], initial)
    assert torch.allclose(params[0], params[1], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alignment_pairs=["1:resnet.no_such_layer"]), r"no layer 'resnet.no_such_layer'.*Valid layer names"),
        (dict(alignment_pairs=["9:resnet.encoder.stages.0"]), r"student block 9 is out of range.*1..4"),
    ],
)
def test_bad_alignment_pairs_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, **kwargs)


def test_label_mismatch_fails_unless_distillation_none(tmp_path):
    with pytest.raises(ValueError, match="distillation_type='none'"):
        make_trainer(tmp_path, teacher=make_resnet_teacher(num_labels=5))
    trainer = make_trainer(tmp_path, teacher=make_resnet_teacher(num_labels=5), distillation_type="none", max_steps=1)
    trainer.train()


def test_non_square_patch_grid_fails(tmp_path):
    with pytest.raises(ValueError, match="square patch grid"):
        make_trainer(tmp_path, student=make_vit(image_size=18))


def test_channel_mismatch_fails(tmp_path):
    with pytest.raises(ValueError, match="3 input channels.*num_channels=3"):
        make_trainer(tmp_path, teacher=make_resnet_teacher(num_channels=3))


def test_missing_teacher_fails(tmp_path):
    with pytest.raises(ValueError, match="teacher_model"):
        DearKDTrainer(model=make_vit(), args=trainer_config(tmp_path), train_dataset=make_dataset())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("alpha", 1.5, r"alpha=1.5 must lie in \[0, 1\]"),
        ("beta", -1.0, "beta=-1.0 must be >= 0"),
        ("tau", 0.0, "tau"),
        ("beta_schedule", "cosine", "beta_schedule='cosine' is not one of"),
        ("align_ratio", 0.0, "align_ratio=0.0 must be > 0"),
        ("label_loss_heads", "sum", "label_loss_heads='sum' is not one of"),
        ("distillation_stop_fraction", 1.5, r"distillation_stop_fraction=1.5 must lie in \[0, 1\]"),
        *[
            (name, value, f"{name}={value} is not a finite number")
            for name in ("alpha", "beta", "tau", "distillation_stop_epoch", "learning_rate", "weight_decay")
            for value in (float("nan"), float("inf"))
        ],
    ],
)
def test_bad_config_values_fail(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        trainer_config(tmp_path, **{field: value})


def test_stop_epoch_beyond_run_warns(tmp_path):
    with pytest.warns(UserWarning, match="distillation never stops"):
        trainer_config(tmp_path, distillation_stop_epoch=5.0, num_train_epochs=2)


def test_config_parses_with_hf_argument_parser(tmp_path):
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(DearKDConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--alignment_pairs", "3:layer1", "6:layer2", "--distillation_type", "soft"]
    )
    assert config.alignment_pairs == ["3:layer1", "6:layer2"]
    assert config.distillation_type == "soft" and config.remove_unused_columns is False
    assert os.fspath(config.output_dir) == str(tmp_path)


def _deit(with_teacher: bool):
    from transformers import DeiTConfig, DeiTForImageClassification, DeiTForImageClassificationWithTeacher

    model_class = DeiTForImageClassificationWithTeacher if with_teacher else DeiTForImageClassification
    return model_class(DeiTConfig(**TINY_VIT))


def _dearkd_vit():
    from dearkd_hf import DearKDViTConfig, DearKDViTForImageClassification

    config = DearKDViTConfig(**TINY_VIT, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
    return DearKDViTForImageClassification(config)


@pytest.mark.parametrize(
    "build, has_distillation_head",
    [(lambda: _deit(False), False), (lambda: _deit(True), True), (_dearkd_vit, True)],
    ids=["deit", "deit_with_teacher", "dearkd_vit"],
)
def test_every_supported_student_trains_and_kd_uses_the_distillation_head(tmp_path, build, has_distillation_head):
    student = build()
    trainer = make_trainer(tmp_path, student=student, max_steps=2)
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(trainer.model.train(), batch)
    with torch.no_grad():
        outputs = student(pixel_values=batch["pixel_values"])
        teacher_labels = trainer.teacher.logits(batch["pixel_values"]).argmax(-1)
    kd_logits = outputs.distillation_logits if has_distillation_head else outputs.logits
    expected_kd = torch.nn.functional.cross_entropy(kd_logits, teacher_labels)
    assert trainer._metrics["loss_kd"][-1].item() == pytest.approx(expected_kd.item(), rel=1e-4)
    assert torch.isfinite(loss)
    trainer.train()
    assert [log["stage"] for log in trainer.state.log_history if "loss" in log] == [1.0, 1.0]
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics


TEACHER_NAMES = ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    "student_names",
    [TEACHER_NAMES, ["bird", "cat", "dog"], ["0", "1", "2"]],
    ids=["same-order", "other-order", "unnamed-student"],
)
def test_teacher_logits_are_put_in_the_students_class_order(tmp_path, student_names):
    """String labels become alphabetical class ids; KD must then compare the same class on both sides."""
    teacher = make_resnet_teacher()
    teacher.config.id2label = dict(enumerate(TEACHER_NAMES))
    trainer = make_trainer(tmp_path, student=make_vit(id2label=dict(enumerate(student_names))), teacher=teacher)
    pixels = next(iter(trainer.get_train_dataloader()))["pixel_values"]
    with torch.no_grad():
        raw = teacher(pixel_values=pixels).logits
    seen, _ = trainer._teacher_targets(pixels)
    order = [TEACHER_NAMES.index(name) if name in TEACHER_NAMES else int(name) for name in student_names]
    assert torch.equal(seen, raw[:, order])


def test_teacher_with_other_class_names_fails_unless_ignored(tmp_path, caplog):
    teacher = make_resnet_teacher()
    teacher.config.id2label = dict(enumerate(TEACHER_NAMES))
    student = make_vit(id2label={0: "car", 1: "dog", 2: "bird"})
    with pytest.raises(
        ValueError, match=r"classes \['cat', 'dog', 'bird'\] are not the student's.*ignore_label_names"
    ):
        make_trainer(tmp_path, student=student, teacher=teacher)
    with caplog.at_level("WARNING"):
        trainer = make_trainer(tmp_path, student=student, teacher=teacher, ignore_label_names=True, max_steps=1)
    assert "distilling class i into class i anyway" in caplog.text
    trainer.train()


def test_non_finite_loss_stops_training_naming_the_step_and_components(tmp_path):
    class Poison(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.vit.embeddings.cls_token.fill_(float("nan"))

    trainer = make_trainer(tmp_path, save_strategy="steps", save_steps=1)
    trainer.add_callback(Poison())
    with pytest.raises(
        FloatingPointError, match=r"Training step 3: the loss is nan \(loss_ce=nan, loss_kd=.*loss_align="
    ):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "checkpoint-2" / "model.safetensors").values())


@pytest.mark.parametrize(
    "schedule, expected", [("constant", [1.0, 1.0, 1.0, 1.0]), ("linear", [1.0, 0.75, 0.5, 0.25])]
)
def test_alignment_weight_follows_beta_schedule_over_stage1(tmp_path, schedule, expected):
    trainer = make_trainer(tmp_path, beta_schedule=schedule)  # 4 stage-1 steps, stop at epoch 1
    trainer.train()
    betas = [log["beta"] for log in trainer.state.log_history if "beta" in log]
    assert betas == pytest.approx(expected)


def test_default_alignment_weight_is_balanced_against_the_label_and_kd_terms(tmp_path):
    trainer = make_trainer(tmp_path)  # the defaults: beta_schedule="balanced", align_ratio=1, beta=1; a log per step
    assert (trainer.args.beta_schedule, trainer.args.align_ratio) == ("balanced", 1.0)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "beta" in log]
    assert len(logs) == 4
    for log in logs:
        task = 0.5 * log["loss_ce"] + 0.5 * log["loss_kd"]
        assert log["beta"] == pytest.approx(min(1.0, 1.0 * task / log["loss_align"]), rel=1e-4)
        assert log["loss"] == pytest.approx(task + log["beta"] * log["loss_align"], rel=1e-4)


def test_resume_true_takes_the_last_complete_checkpoint(tmp_path, caplog):
    make_trainer(tmp_path, save_strategy="steps", save_steps=2, max_steps=4).train()
    state = tmp_path / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[:20])  # killed while writing it
    trainer = make_trainer(tmp_path, save_strategy="no", max_steps=4)
    loaded = []
    trainer._load_from_checkpoint = lambda checkpoint, model=None: loaded.append(os.path.basename(checkpoint))
    with caplog.at_level("WARNING"):
        trainer.train(resume_from_checkpoint=True)
    assert loaded == ["checkpoint-2"] and "checkpoint-4: its trainer_state.json is not valid JSON" in caplog.text
    with pytest.raises(ValueError, match="checkpoint-4: cannot resume from it, its trainer_state.json is not valid"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    trainer.checkpoint_files = ("extra.safetensors",)  # what a trainer may add to a complete checkpoint
    with pytest.raises(ValueError, match="no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def test_evaluation_and_prediction_batches_never_go_through_the_training_collator(tmp_path):
    """A mixup training collator mixes training batches only; eval/test batches use `eval_data_collator` (by
    default the mixup collator's plain `collate_fn`), and the training collator is left in place."""
    examples = make_dataset(8)
    mixup = MixupCollator(mixup=1.0, cutmix=0.0, num_classes=3)
    trainer = DearKDTrainer(
        model=make_vit(),
        teacher_model=make_resnet_teacher(),
        args=trainer_config(tmp_path),
        train_dataset=examples,
        eval_dataset=examples,
        data_collator=mixup,
    )
    assert next(iter(trainer.get_train_dataloader()))["labels"].is_floating_point()
    for loader in (trainer.get_eval_dataloader(), trainer.get_test_dataloader(examples)):
        assert next(iter(loader))["labels"].dtype == torch.long
    assert trainer.data_collator is mixup

    seen = []

    def own_collator(batch):
        seen.append(len(batch))
        return collate_fn(batch)

    trainer.eval_data_collator = own_collator
    next(iter(trainer.get_eval_dataloader()))
    assert seen == [8] and trainer.data_collator is mixup


def test_the_trainer_imports_nothing_from_the_data_loading_module():
    """The core stands alone: importing the trainer loads neither dearkd_hf.data.loading nor the example helpers."""
    code = "import sys, dearkd_hf.trainer; print(sorted(m for m in sys.modules if m == 'dearkd_hf.data.loading'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_trainer_signature_is_explicit_and_every_argument_is_documented():
    import inspect
    import re

    from transformers import Trainer

    import dearkd_hf.trainer

    parameters = inspect.signature(DearKDTrainer.__init__).parameters
    assert not [p for p in parameters.values() if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    documented = re.findall(r"^        (\w+) \(", DearKDTrainer.__doc__, flags=re.MULTILINE)
    assert documented == [name for name in parameters if name != "self"]
    not_taken = {"model_init", "compute_loss_func"}  # the docstring says why
    assert set(inspect.signature(Trainer.__init__).parameters) - not_taken <= set(parameters)
    assert all(
        getattr(dearkd_hf.trainer, name).__module__ == "dearkd_hf.trainer" for name in dearkd_hf.trainer.__all__
    )


def test_config_documents_each_field_once():
    import re

    from dearkd_hf import DearKDViTConfig

    own = list(DearKDConfig.__annotations__)
    assert re.findall(r"^        (\w+) \(", DearKDConfig.__doc__, flags=re.MULTILINE) == own
    vit_fields = list(DearKDViTConfig.__annotations__)
    assert re.findall(r"^        (\w+) \(", DearKDViTConfig.__doc__, flags=re.MULTILINE) == vit_fields


@pytest.mark.parametrize("stop_epoch, step", [(1.0, 4), (0.5, 2)])
def test_save_at_distillation_stop_checkpoints_the_last_stage1_step(tmp_path, stop_epoch, step):
    """The checkpoint holds the student after its last stage-1 step (4 steps per epoch here), and no other is made."""
    trainer = make_trainer(
        tmp_path / "run",
        distillation_stop_epoch=stop_epoch,
        save_at_distillation_stop=True,
        lr_scheduler_type="constant",
    )
    trainer.train()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == [f"checkpoint-{step}"]
    stopped = next(log for log in trainer.state.log_history if "distillation_stopped_at_epoch" in log)
    assert stopped["step"] == step  # logged at the first stage-2 step's start, after `step` stage-1 steps
    reference = make_trainer(
        tmp_path / "ref", distillation_stop_epoch=stop_epoch, max_steps=step, lr_scheduler_type="constant"
    )
    reference.train()
    saved = AutoModelForImageClassification.from_pretrained(tmp_path / "run" / f"checkpoint-{step}").state_dict()
    expected = {name: value for name, value in reference.model.state_dict().items() if "aligner" not in name}
    assert saved.keys() == expected.keys()
    for name, value in saved.items():
        assert torch.equal(value, expected[name]), name


def test_save_at_distillation_stop_is_off_by_default(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train()
    assert not list(tmp_path.glob("checkpoint-*"))


def test_teacher_labels_make_the_label_term_learn_the_teachers_probabilities(tmp_path):
    student = _dearkd_vit()
    trainer = make_trainer(tmp_path, student=student, max_steps=1, teacher_labels=True, beta=0.0)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(trainer.model.train(), batch)
    with torch.no_grad():
        cls_logits = student(pixel_values=batch["pixel_values"]).cls_logits
        probabilities = trainer.teacher.logits(batch["pixel_values"]).softmax(-1)
    expected = -(probabilities * cls_logits.log_softmax(-1)).sum(-1).mean()  # CE to the teacher's distribution
    assert trainer._metrics["loss_ce"][-1].item() == pytest.approx(expected.item(), rel=1e-4)
    dataset_ce = torch.nn.functional.cross_entropy(cls_logits, batch["labels"])
    assert abs(dataset_ce.item() - expected.item()) > 1e-3  # the dataset's labels are not what it learned


def test_teacher_labels_need_logit_distillation(tmp_path):
    with pytest.raises(ValueError, match="teacher_labels=True .* set distillation_type to 'hard' or 'soft'"):
        trainer_config(tmp_path, teacher_labels=True, distillation_type="none")
