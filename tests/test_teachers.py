"""load_teacher: timm names and folders, transformers folders and instances, bare modules, re-normalisation."""

import pytest
import timm
import torch
from helpers import make_resnet_teacher, make_vit
from torch import nn
from transformers import ViTImageProcessor

from dearkd_hf import Teacher, load_teacher


def test_timm_name_exposes_stages_classifier_and_fitted_statistics():
    teacher = load_teacher("test_resnet", pretrained=False, num_classes=4, in_chans=1)
    assert teacher.stage_names[:2] == ["layer1", "layer2"]
    assert teacher.classifier_name == "fc"
    assert teacher.num_labels == 4 and teacher.num_channels == 1
    assert len(teacher.mean) == 1 and len(teacher.std) == 1  # ImageNet statistics averaged for one channel
    out = teacher.forward_with_features(torch.randn(2, 1, 32, 32), ["layer1", "layer2"])
    assert out.logits.shape == (2, 4) and out.features["layer1"].dim() == 4
    assert out.pre_logits.shape == (2, teacher.module.num_features)
    assert not any(p.requires_grad for p in teacher.module.parameters()) and not teacher.module.training


def test_timm_folder_keeps_label_names(tmp_path):
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3, in_chans=1)
    timm.models.save_for_hf(model, tmp_path, model_config={"label_names": ["a", "b", "c"]}, safe_serialization=True)
    teacher = load_teacher(str(tmp_path))
    assert teacher.id2label == {0: "a", 1: "b", 2: "c"}
    x = torch.randn(1, 1, 32, 32)
    assert torch.allclose(teacher.logits(x), model.eval()(x), atol=1e-6)


def test_loading_a_teacher_leaves_the_seeded_rng_as_it_was(tmp_path):
    """A run's student and aligners are initialised after the teacher is loaded, or from the same seed with no teacher
    loaded at all (a teacher cache): loading one must not draw from the seeded stream (timm initialises first)."""
    timm.models.save_for_hf(
        timm.create_model("test_resnet", pretrained=False, num_classes=3, in_chans=1), tmp_path / "timm"
    )
    make_resnet_teacher().save_pretrained(tmp_path / "transformers")
    torch.manual_seed(0)
    expected = torch.rand(4)
    for folder in ("timm", "transformers"):
        torch.manual_seed(0)
        load_teacher(str(tmp_path / folder))
        assert torch.equal(torch.rand(4), expected), folder


def test_transformers_folder_reads_its_image_processor(tmp_path):
    model = make_resnet_teacher()
    model.save_pretrained(tmp_path)
    ViTImageProcessor(image_mean=[0.3], image_std=[0.2]).save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    assert teacher.mean == (0.3,) and teacher.std == (0.2,)
    assert teacher.stage_names == ["resnet.encoder.stages.0", "resnet.encoder.stages.1"]
    assert teacher.classifier_name == "classifier" and teacher.num_labels == 3
    assert teacher.forward_with_features(torch.randn(2, 1, 16, 16)).pre_logits.shape == (2, 16)


def test_bare_module_with_overrides():
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    teacher = load_teacher(module, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], id2label={0: "cat", 1: "dog"})
    assert isinstance(teacher, Teacher) and teacher.id2label == {0: "cat", 1: "dog"}
    assert teacher.mean == (0.5, 0.5, 0.5) and teacher.classifier_name == "4" and teacher.stage_names == []


def test_normalize_from_maps_student_to_teacher_statistics():
    teacher = load_teacher(make_resnet_teacher(), mean=[0.2], std=[0.5])
    raw = torch.rand(2, 1, 4, 4)
    student_view = (raw - 0.7) / 0.1
    assert torch.allclose(teacher.normalize_from(student_view, [0.7], [0.1]), (raw - 0.2) / 0.5, atol=1e-5)
    assert teacher.normalize_from(student_view, [0.2], [0.5]) is student_view


def test_unknown_layer_and_missing_folder_errors(tmp_path):
    teacher = load_teacher(make_resnet_teacher())
    with pytest.raises(ValueError, match="Unknown teacher layer"):
        teacher.forward_with_features(torch.randn(1, 1, 16, 16), ["nope"])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_teacher(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        load_teacher(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    "name, error, message",
    [
        ("./nope_dir/teacher", FileNotFoundError, r"teacher_model_name_or_path ./nope_dir/teacher: no such folder \("),
        ("EXISTING/teacher", FileNotFoundError, r"EXISTING/teacher: no such folder"),
        (
            "nope_dir/teacher",
            OSError,
            r"nope_dir/teacher: there is no local folder .* Hub cannot be reached .*offline",
        ),
    ],
    ids=["dot-relative", "first-component-exists", "hub-offline"],
)
def test_missing_relative_path_says_no_such_folder_or_that_the_hub_is_unreachable(
    tmp_path, monkeypatch, name, error, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    (tmp_path / "outputs").mkdir()
    name = name.replace("EXISTING", "outputs")
    with pytest.raises(error, match=message.replace("EXISTING", "outputs")):
        load_teacher(name)


def test_garbage_config_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'} is not valid JSON"):
        load_teacher(str(tmp_path))


def test_a_vit_teacher_is_refused_as_not_a_cnn(tmp_path):
    make_vit().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not a CNN .*ViT.*Attention"):
        load_teacher(str(tmp_path))
    with pytest.raises(ValueError, match="is not a CNN"):
        load_teacher(make_vit())
