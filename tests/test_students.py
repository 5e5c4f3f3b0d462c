"""Every supported ViT family as a student (students.STUDENT_FAMILIES): tiny configurations built offline, trained
through both stages by examples/run.py, saved, reloaded with AutoModelForImageClassification and pushed to an
intercepted Hub; geometry read from the model; bad students refused before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch
from helpers import NUM_LABELS, FakeHubApi, make_config, make_dataset, make_resnet_teacher, run_script, write_teacher
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    BeitConfig,
    BeitForImageClassification,
    BitImageProcessor,
    Data2VecVisionConfig,
    Data2VecVisionForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    pipeline,
)

from dearkd_hf import DearKDTrainer
from dearkd_hf import trainer as dearkd_trainer
from dearkd_hf.models.grayscale import FOLDED_KEY
from dearkd_hf.models.students import STUDENT_FAMILIES, student_forward_kwargs, student_geometry, student_outputs

pytestmark = pytest.mark.usefixtures("one_thread")
NATIVE = 32  # every tiny student is built for 32-pixel images with 4-pixel patches (an 8x8 grid)
TRAINED = 16  # and trained at half that size, as 224 -> 112
TRANSFORMERS_SHAPE = dict(
    image_size=NATIVE, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=4, num_attention_heads=2
)
TIMM_SHAPE = dict(img_size=NATIVE, patch_size=4, in_chans=1, embed_dim=16, depth=4, num_heads=2)


def timm_student(architecture: str, num_labels: int = NUM_LABELS) -> TimmWrapperForImageClassification:
    """A timm architecture as transformers loads a timm checkpoint (TimmWrapper), shrunk, built without the Hub."""
    pretrained_cfg = timm.models.get_pretrained_cfg(architecture).to_dict()
    config = TimmWrapperConfig(
        architecture=architecture, model_args=dict(TIMM_SHAPE), num_labels=num_labels, pretrained_cfg=pretrained_cfg
    )
    return TimmWrapperForImageClassification(config)


def transformers_student(model_class, config_class, num_labels: int = NUM_LABELS, **extra):
    return model_class(config_class(**TRANSFORMERS_SHAPE, num_labels=num_labels, **extra))


# family name -> (builder, distillation head, prefix tokens); the checkpoint each tiny configuration is shaped like
# is the family's `example` in STUDENT_FAMILIES / the docs/students.md table.
STUDENTS = {
    "vit": (lambda n=NUM_LABELS: transformers_student(ViTForImageClassification, ViTConfig, n), False, 1),
    "deit-distilled": (
        lambda n=NUM_LABELS: transformers_student(DeiTForImageClassificationWithTeacher, DeiTConfig, n),
        True,
        2,
    ),
    "timm-vit": (lambda n=NUM_LABELS: timm_student("vit_tiny_patch16_224", n), False, 1),
    "timm-deit-distilled": (lambda n=NUM_LABELS: timm_student("deit_tiny_distilled_patch16_224", n), True, 2),
    "timm-dinov2-registers": (lambda n=NUM_LABELS: timm_student("vit_small_patch14_reg4_dinov2", n), False, 5),
    "dinov2": (lambda n=NUM_LABELS: transformers_student(Dinov2ForImageClassification, Dinov2Config, n), False, 1),
    "dinov2-registers": (
        lambda n=NUM_LABELS: transformers_student(
            Dinov2WithRegistersForImageClassification, Dinov2WithRegistersConfig, n, num_register_tokens=2
        ),
        False,
        3,
    ),
    "beit": (
        lambda n=NUM_LABELS: transformers_student(
            BeitForImageClassification, BeitConfig, n, use_relative_position_bias=True
        ),
        False,
        1,
    ),
    "data2vec-vision": (
        lambda n=NUM_LABELS: transformers_student(
            Data2VecVisionForImageClassification, Data2VecVisionConfig, n, use_relative_position_bias=True
        ),
        False,
        1,
    ),
}


@pytest.mark.parametrize("name", STUDENTS)
def test_geometry_is_read_from_the_model(name):
    build, distilled, prefix = STUDENTS[name]
    geometry = student_geometry(build())
    assert (geometry.num_blocks, geometry.hidden_size, geometry.grid) == (4, 16, (8, 8))
    assert geometry.num_prefix_tokens == prefix and geometry.distillation_head == distilled
    assert geometry.num_channels == 1 and geometry.num_labels == NUM_LABELS
    assert student_geometry(build(), image_size=TRAINED).grid == (TRAINED // 4,) * 2


@pytest.mark.parametrize("name", STUDENTS)
def test_alignment_reads_the_patch_tokens_of_the_paired_block(tmp_path, name):
    """The aligned features come from block 2's patch tokens (prefix tokens dropped), at the training grid."""
    build = STUDENTS[name][0]
    student = build()
    size = TRAINED
    trainer = DearKDTrainer(
        model=student,
        teacher_model=make_resnet_teacher(),
        args=make_config(tmp_path, alignment_pairs=["2:resnet.embedder"]),
        image_size=size,
    )
    seen = {}
    block = _blocks(student)[1]
    block.register_forward_hook(
        lambda _m, _a, out: seen.__setitem__("tokens", out[0] if isinstance(out, tuple) else out)
    )
    pixels = torch.randn(2, 1, size, size)
    with trainer.aligners.running(True):
        outputs = student.train()(pixel_values=pixels, output_hidden_states=True, **_extra(trainer))
    (features,) = trainer.aligners.aligned_features(outputs)
    patches = (size // 4) ** 2
    assert features.shape[:2] == (2, patches)  # the 4x4 grid at 16 pixels, 8x8 at 32
    head = trainer.aligners.head.aligners[0]
    assert torch.allclose(features, head(seen["tokens"][:, -patches:]), atol=1e-5)


def _blocks(student: torch.nn.Module) -> torch.nn.ModuleList:
    """The student's transformer blocks: its first ModuleList or Sequential of four modules."""
    return next(
        m for m in student.modules() if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) and len(m) == 4
    )


def _extra(trainer):
    from dearkd_hf.models.students import student_forward_kwargs

    kwargs = student_forward_kwargs(trainer.geometry, True)
    kwargs.pop("output_hidden_states")
    return kwargs


def test_logit_distillation_goes_through_the_timm_distillation_head(tmp_path, monkeypatch):
    seen = []
    real = dearkd_trainer.stage1_loss
    monkeypatch.setattr(dearkd_trainer, "stage1_loss", lambda *a, **kw: seen.append(a[1]) or real(*a, **kw))
    trainer = DearKDTrainer(
        model=STUDENTS["timm-deit-distilled"][0](),
        teacher_model=make_resnet_teacher(),
        args=make_config(tmp_path, max_steps=1),
        train_dataset=make_dataset(8),
        image_size=16,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(trainer.model.train(), batch)
    assert seen[0] is not None and seen[0].shape == (8, NUM_LABELS)  # the distillation token's own logits


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    return write_teacher(tmp_path_factory.mktemp("teacher"), num_labels=10)


def checkpoint_folder(name: str, folder: Path) -> Path:
    """The family's tiny student saved as a Hub checkpoint would be (ten labels, a processor for 32-pixel images)."""
    STUDENTS[name][0](10).save_pretrained(folder)
    if name.startswith("dinov2"):  # DINOv2's processor resizes, then crops
        processor = BitImageProcessor(size={"shortest_edge": 36}, crop_size=NATIVE, image_mean=[0.5], image_std=[0.5])
        processor.save_pretrained(folder)
    elif not name.startswith("timm"):  # a timm model's processor is read from its config.json
        processor = ViTImageProcessor(size={"height": NATIVE, "width": NATIVE}, image_mean=[0.5], image_std=[0.5])
        processor.save_pretrained(folder)
    return folder


def run_args(base: Path, teacher: str, out: Path, epochs: int, *extra: str) -> list[str]:
    # fmt: off
    return [
        "--model_name_or_path", str(base), "--teacher_model_name_or_path", teacher, "--image_size", str(TRAINED),
        "--max_train_samples", "32", "--max_eval_samples", "16", "--num_train_epochs", str(epochs),
        "--per_device_train_batch_size", "16", "--report_to", "none", "--output_dir", str(out), "--logging_steps", "1",
        "--distillation_stop_epoch", "1", *extra,
    ]
    # fmt: on


@pytest.mark.parametrize("name", STUDENTS)
def test_family_trains_both_stages_saves_reloads_and_pushes(name, tmp_path, teacher_dir, monkeypatch):
    """run.py --model_name_or_path on a checkpoint-shaped folder, at half the checkpoint's image size."""
    build = STUDENTS[name][0]
    base = checkpoint_folder(name, tmp_path / name)
    hub = FakeHubApi()
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: hub)
    out = tmp_path / "out"
    size = TRAINED
    run_script.main(
        run_args(base, teacher_dir, out, 2, "--save_strategy", "no", "--push_to_hub", "--hub_model_id", f"me/{name}")
    )
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    stages = [log["stage"] for log in history if "loss" in log]
    assert 1.0 in stages and 2.0 in stages
    assert all(log["loss_align"] > 0 and log["loss_kd"] > 0 for log in history if "loss_align" in log)

    final = hub.uploads[-1]
    assert {"model.safetensors", "config.json", "README.md"} <= set(final["files"])
    assert not [k for k in final["tensors"]["model.safetensors"] if "aligner" in k]
    assert f"initialised from local folder `{Path(base).name}`" in final["card"] and str(base) not in final["card"]
    assert "base_model:" not in final["card"]  # a local folder is no Hub id

    model, info = AutoModelForImageClassification.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == type(build()).__name__
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert getattr(model.config, FOLDED_KEY)  # trained on grayscale, saved taking RGB (dearkd_hf.models.grayscale)
    with torch.no_grad():
        logits = model.eval()(pixel_values=torch.randn(2, 3, size, size), **_reload_kwargs(name)).logits
    assert logits.shape == (2, 10)
    processor = AutoImageProcessor.from_pretrained(out)  # the saved processor feeds the size the student learned on
    with torch.no_grad():
        pixels = processor(Image.new("RGB", (40, 40)), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (size, size)
    if name in ("vit", "deit-distilled"):  # trained at half its config's size: saved at that size, as pipeline()
        assert model.config.image_size == size  # runs it (without interpolate_pos_encoding)
    if name in ("beit", "data2vec-vision"):
        return  # relative position biases: not resampled at save, so pipeline() needs the native size (docs/hub.md)
    classify = pipeline("image-classification", model=model.eval(), image_processor=processor, top_k=10)
    gray = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8), mode="L")
    scores = [{p["label"]: p["score"] for p in classify(image)} for image in (gray, gray.convert("RGB"))]
    assert len(scores[0]) == 10 and scores[0] == pytest.approx(scores[1], abs=1e-5)


def _reload_kwargs(name: str) -> dict:
    """transformers ViT, DeiT and BEiT-style models interpolate when asked; DINOv2 always does; a timm ViT was resized
    for good."""
    return {"interpolate_pos_encoding": True} if name in ("vit", "deit-distilled", "beit", "data2vec-vision") else {}


@pytest.mark.parametrize("name", ["timm-deit-distilled", "beit"])
def test_a_resized_student_resumes_from_its_checkpoint(name, tmp_path, teacher_dir, monkeypatch):
    """A checkpoint of a student trained at another size than its own (a resized timm ViT, an interpolating BEiT)
    restores it and its aligners, and training goes on."""
    base = checkpoint_folder(name, tmp_path / name)
    out = tmp_path / "out"
    run_script.main(run_args(base, teacher_dir, out, 2, "--save_strategy", "epoch"))
    assert (out / "checkpoint-2" / "aligners.safetensors").is_file()
    for path in out.iterdir():  # as if killed after the first epoch's checkpoint
        if path.name not in ("checkpoint-2", "dearkd_run.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    steps, training_step = [], DearKDTrainer.training_step
    monkeypatch.setattr(
        DearKDTrainer,
        "training_step",
        lambda self, *a, **kw: steps.append(self.state.global_step) or training_step(self, *a, **kw),
    )
    run_script.main(run_args(base, teacher_dir, out, 2, "--save_strategy", "epoch"))
    assert steps == [2, 3]  # only the second epoch ran, from checkpoint-2
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_supported_families_cover_the_issue():
    names = " ".join(family.name for family in STUDENT_FAMILIES)
    for name in ("ViT", "DeiT", "DINOv2", "BEiT", "Data2Vec-vision", "timm"):
        assert name in names


def test_cnn_and_swin_students_are_refused_naming_the_families(tmp_path):
    cnn = ResNetForImageClassification(ResNetConfig(num_channels=1, hidden_sizes=[8], depths=[1], embedding_size=8))
    swin = SwinForImageClassification(
        SwinConfig(image_size=16, patch_size=4, num_channels=1, embed_dim=8, depths=[1], num_heads=[1])
    )
    timm_cnn = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet18", num_labels=3))
    for student in (cnn, swin, timm_cnn):
        with pytest.raises(ValueError, match=r"not a supported ViT student.*DINOv2.*BEiT.*TimmWrapper"):
            DearKDTrainer(model=student, teacher_model=make_resnet_teacher(), args=make_config(tmp_path))


@pytest.mark.parametrize("name", ["timm-vit", "dinov2", "beit"])
def test_non_square_grid_is_refused_before_training(tmp_path, name):
    with pytest.raises(ValueError, match=r"image_size: .*square patch grid at image_size=18"):
        DearKDTrainer(
            model=STUDENTS[name][0](),
            teacher_model=make_resnet_teacher(),
            args=make_config(tmp_path),
            image_size=18,
        )


def dearkd_vit():
    from dearkd_hf import DearKDViTConfig, DearKDViTForImageClassification

    return DearKDViTForImageClassification(
        DearKDViTConfig(image_size=NATIVE, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, num_labels=NUM_LABELS)
    )  # fmt: skip


def test_a_student_that_cannot_interpolate_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"cannot interpolate its position embeddings to 16.*--image_size 32"):
        DearKDTrainer(
            model=dearkd_vit(), teacher_model=make_resnet_teacher(), args=make_config(tmp_path), image_size=16
        )


def test_students_page_lists_every_family():
    page = (Path(__file__).resolve().parents[1] / "docs" / "students.md").read_text()
    for family in STUDENT_FAMILIES:
        assert family.name in page and family.example in page


def test_a_refused_student_is_left_as_it_came(tmp_path):
    """Checks run before the student is set up: a timm ViT refused for its channels keeps its size and head mode."""
    student = STUDENTS["timm-deit-distilled"][0]()
    with pytest.raises(ValueError, match="teacher_model: the teacher takes 3 input channels"):
        DearKDTrainer(
            model=student,
            teacher_model=make_resnet_teacher(num_channels=3),
            args=make_config(tmp_path),
            image_size=16,
        )
    assert tuple(student.timm_model.patch_embed.img_size) == (NATIVE, NATIVE)
    assert not student.timm_model.distilled_training
    assert student.config.model_args["img_size"] == NATIVE


@pytest.mark.parametrize("name", ["vit", "deit-distilled", "beit", "timm-vit"])
def test_predict_on_unlabeled_images_at_the_trained_size(tmp_path, name):
    """``trainer.predict`` on images without labels runs the student as training did (at the new size too)."""
    build = STUDENTS[name][0]
    trainer = DearKDTrainer(
        model=build(),
        teacher_model=make_resnet_teacher(),
        args=make_config(tmp_path, per_device_eval_batch_size=4),
        image_size=TRAINED,
    )
    pixels = torch.randn(6, 1, TRAINED, TRAINED)
    unlabeled = datasets.Dataset.from_dict({"pixel_values": pixels.numpy()}).with_format("torch")
    output = trainer.predict(unlabeled)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    assert logits.shape == (6, NUM_LABELS)
    assert output.label_ids is None
    model = trainer.model.eval()
    with torch.no_grad():
        kwargs = student_forward_kwargs(trainer.geometry, output_hidden_states=False)
        expected = student_outputs(model(pixel_values=pixels, **kwargs)).logits
    assert torch.allclose(torch.as_tensor(logits), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["vit", "deit-distilled"])
def test_a_student_trained_at_another_size_is_saved_at_that_size(name, tmp_path):
    """saved_at_training_size: the saved model, reloaded, computes without interpolate_pos_encoding what the trained
    one computed with it; the live model is left as it was."""
    from dearkd_hf.models.students import saved_at_training_size

    torch.manual_seed(0)
    model = STUDENTS[name][0]().eval()
    geometry = student_geometry(model, TRAINED)
    table = model.base_model.embeddings.position_embeddings
    with saved_at_training_size(model, geometry) as changed:
        assert changed
        model.save_pretrained(tmp_path)
    assert model.config.image_size == NATIVE and model.base_model.embeddings.position_embeddings is table
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded.config.image_size == TRAINED
    pixels = torch.randn(2, 1, TRAINED, TRAINED)
    with torch.no_grad():
        expected = model(pixel_values=pixels, interpolate_pos_encoding=True).logits
        assert torch.allclose(reloaded(pixel_values=pixels).logits, expected, atol=1e-5)
