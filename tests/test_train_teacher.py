"""examples/train_teacher.py end to end on the embedded dataset: a tiny timm and a tiny transformers teacher."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from datasets import load_from_disk
from transformers import AutoImageProcessor, AutoModelForImageClassification

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_teacher.py"
# The teacher must carry the labels of the data it trained on: the embedded dataset's ClassLabel names.
FASHION_MNIST_LABELS = (
    load_from_disk(str(ROOT / "examples" / "data" / "fashion_mnist_small"))["train"].features["label"].names
)


def tiny_run(epochs: int = 1) -> list[str]:
    return [
        "--max_train_samples", "64", "--max_eval_samples", "32", "--num_train_epochs", str(epochs),
        "--per_device_train_batch_size", "16", "--image_size", "28", "--report_to", "none",
    ]  # fmt: skip


spec = importlib.util.spec_from_file_location("train_teacher", SCRIPT)
train_teacher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_teacher)


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def eval_accuracy(output_dir: Path) -> float:
    return json.loads((output_dir / "all_results.json").read_text())["eval_accuracy"]


@pytest.mark.slow
def test_timm_teacher_saves_a_timm_folder_and_resumes(tmp_path):
    out = tmp_path / "timm_teacher"
    args = ["--model_name_or_path", "test_resnet", "--output_dir", str(out), *tiny_run(2), "--save_strategy", "epoch"]
    run_script(*args)
    assert (out / "model.safetensors").is_file()
    assert 0.0 <= eval_accuracy(out) <= 1.0
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model.num_classes == 10
    assert model.pretrained_cfg["label_names"] == FASHION_MNIST_LABELS
    # Trained on grayscale, saved taking RGB (dearkd_hf.models.grayscale;
    # test_a_grayscale_teacher_is_saved_taking_rgb_...)
    assert tuple(model.pretrained_cfg["input_size"]) == (3, 28, 28)
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 10)

    for path in out.iterdir():  # as if killed after the first epoch's checkpoint
        if path.name not in ("checkpoint-4", "dearkd_run.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    result = run_script(*args)
    assert f"Resuming from {out / 'checkpoint-4'}" in result.stderr + result.stdout
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8


@pytest.mark.slow
def test_transformers_teacher_from_config_overrides(tmp_path):
    out = tmp_path / "hf_teacher"
    overrides = "hidden_sizes=[16,32],depths=[1,1],embedding_size=16"
    model_args = ["--model_type", "resnet", "--config_overrides", overrides, "--mixup", "0.8", "--cutmix", "1.0"]
    run_script(*model_args, "--output_dir", str(out), *tiny_run())
    assert 0.0 <= eval_accuracy(out) <= 1.0
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.model_type == "resnet"
    assert model.config.num_labels == 10
    assert [model.config.id2label[i] for i in range(10)] == FASHION_MNIST_LABELS
    assert model.config.hidden_sizes == [16, 32]
    assert list(AutoImageProcessor.from_pretrained(out).image_mean) == [0.5]


def test_config_overrides_keep_lists_whole():
    parsed = train_teacher.parse_config_overrides("hidden_sizes=[16,32],depths=[1,1],hidden_act=relu,drop=0.1")
    assert parsed == {"hidden_sizes": [16, 32], "depths": [1, 1], "hidden_act": "relu", "drop": 0.1}


def test_single_config_file_argument(tmp_path):
    config = tmp_path / "teacher.json"
    config.write_text(
        json.dumps({"model_name_or_path": "resnet10t", "output_dir": str(tmp_path), "train_fraction": 0.5})
    )
    model_args, data_args, training_args = train_teacher.parse_args([str(config)])
    assert (model_args.model_name_or_path, data_args.train_fraction) == ("resnet10t", 0.5)


TINY_RESNET = ["--model_type", "resnet", "--config_overrides", "hidden_sizes=[8,16],depths=[1,1],embedding_size=8"]


def test_same_seed_gives_bit_identical_teachers(tmp_path):
    torch.set_num_threads(1)
    weights = []
    for name in ("first", "second"):
        out = tmp_path / name
        train_teacher.main(
            [*TINY_RESNET, *tiny_run(), "--save_strategy", "no", "--seed", "5", "--output_dir", str(out)]
        )
        weights.append((out / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--output_dir", "FILE/out"], NotADirectoryError, r"--output_dir .*FILE/out: .* is a file, not a folder"),
        (["--output_dir", "/sys/dearkd_teacher"], PermissionError, r"--output_dir /sys/dearkd_teacher: cannot write"),
        (["--model_name_or_path", "./no_teacher"], FileNotFoundError, r"--model_name_or_path ./no_teacher: no such"),
        (["--learning_rate", "nan"], ValueError, r"--learning_rate=nan is not a finite number"),
        (["--config_overrides", "hiden_sizes=[8]"], ValueError, r"no 'hiden_sizes' \(did you mean 'hidden_sizes'"),
    ],
    ids=["output-under-a-file", "output-not-writable", "model-path", "lr-nan", "overrides-typo"],
)
def test_bad_input_fails_before_training(tmp_path, extra, error, message):
    (tmp_path / "FILE").write_text("a file where a folder is expected")
    model = TINY_RESNET if extra[0] != "--model_name_or_path" else []
    args = [*model, *tiny_run(), "--output_dir", str(tmp_path / "out"), *extra]
    args = [value.replace("FILE", str(tmp_path / "FILE")) for value in args]
    with pytest.raises(error, match=message.replace("FILE", str(tmp_path / "FILE"))):
        train_teacher.main(args)
    assert not (tmp_path / "out").exists()


def test_garbage_config_json_in_a_model_folder_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"architecture": ')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'} is not valid JSON"):
        train_teacher.is_timm_model(str(tmp_path))


@pytest.mark.parametrize("family", ["timm", "transformers"])
def test_a_grayscale_teacher_is_saved_taking_rgb_and_loads_back_as_trained(tmp_path, family):
    """A teacher trained on grayscale images is saved with the luma weights folded into its first convolution: it
    opens with transformers (AutoModelForImageClassification + AutoImageProcessor) and runs in pipeline() on PIL
    images of either mode, predicting what the trained teacher does on the evaluation pixels; load_teacher gives the
    1-channel teacher back, whose accuracy is the evaluation's."""
    from transformers import pipeline

    from dearkd_hf.data.transforms import build_transforms
    from dearkd_hf.models.grayscale import FOLDED_KEY
    from dearkd_hf.models.teachers import load_teacher

    out = tmp_path / "teacher"
    model = ["--model_name_or_path", "test_resnet"] if family == "timm" else TINY_RESNET
    run_script(*model, "--num_channels", "1", "--output_dir", str(out), *tiny_run(), "--max_eval_samples", "64")
    assert json.loads((out / "config.json").read_text())[FOLDED_KEY] is True
    teacher = load_teacher(str(out))
    assert teacher.num_channels == 1 and len(teacher.mean) == 1
    hf_model = AutoModelForImageClassification.from_pretrained(out).eval()
    classify = pipeline(
        "image-classification", model=hf_model, image_processor=AutoImageProcessor.from_pretrained(out), top_k=10
    )
    evaluate = build_transforms(28, teacher.mean, teacher.std, 1, train=False)
    test = load_from_disk(str(ROOT / "examples" / "data" / "fashion_mnist_small"))["test"]
    for image in test["image"][:3]:
        pixels = evaluate({"image": [image], "label": [0]})["pixel_values"][0]
        with torch.no_grad():
            expected = teacher.logits(pixels[None]).softmax(-1)[0]
        for mode in ("L", "RGB"):
            scores = {p["label"]: p["score"] for p in classify(image.convert(mode))}
            got = torch.tensor([scores[hf_model.config.id2label[i]] for i in range(10)])
            assert torch.allclose(got, expected, atol=1e-4), mode
    evaluated = test.shuffle(seed=42, keep_in_memory=True).select(range(64))  # --max_eval_samples 64, seed 42
    batch = evaluate({"image": evaluated["image"], "label": evaluated["label"]})
    with torch.no_grad():
        predicted = teacher.logits(torch.stack(batch["pixel_values"])).argmax(-1)
    accuracy = (predicted == torch.tensor(evaluated["label"])).float().mean().item()
    assert accuracy == pytest.approx(eval_accuracy(out), abs=1e-6)


@pytest.mark.slow
def test_an_rgb_timm_teacher_opens_with_transformers_and_in_a_pipeline(tmp_path):
    """The folder loads with AutoModelForImageClassification + AutoImageProcessor, and pipeline() predicts on PIL
    images of either mode what the model predicts on the evaluation transform's pixels."""
    from transformers import pipeline

    from dearkd_hf.data.transforms import build_transforms

    out = tmp_path / "timm_teacher"
    run_script("--model_name_or_path", "test_resnet", "--num_channels", "3", "--output_dir", str(out), *tiny_run())
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    assert model.config.id2label[0] == FASHION_MNIST_LABELS[0] and model.config.num_labels == 10
    classify = pipeline("image-classification", model=model, image_processor=processor, top_k=10)
    images = load_from_disk(str(ROOT / "examples" / "data" / "fashion_mnist_small"))["test"]["image"][:3]
    config = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    evaluate = build_transforms(28, config["mean"], config["std"], 3, train=False)
    for image in [*images, images[0].convert("RGB")]:
        pixels = evaluate({"image": [image], "label": [0]})["pixel_values"][0]
        with torch.no_grad():
            expected = model(pixel_values=pixels[None]).logits.softmax(-1)[0]
        scores = {p["label"]: p["score"] for p in classify(image)}
        assert max(scores, key=scores.get) == model.config.id2label[int(expected.argmax())]
        got = torch.tensor([scores[model.config.id2label[i]] for i in range(10)])
        assert torch.allclose(got, expected, atol=1e-4)
