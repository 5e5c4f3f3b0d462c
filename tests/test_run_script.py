"""examples/run.py end to end on the embedded dataset: a tiny DearKD ViT student, a tiny ResNet teacher, seconds each.

Covers the saved student and its model card, a YAML config, resuming into the same output_dir, --push_to_hub against
an intercepted Hub client (no network) and bad input that must fail before training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Image, Value, load_from_disk
from helpers import EMBEDDED, ROOT, STUDENT, FakeHubApi, run_script, tiny_args, write_teacher
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import dearkd_hf  # noqa: F401  (registers the dearkd_vit model type with the Auto classes)
from dearkd_hf import trainer as dearkd_trainer
from dearkd_hf.trainer import ALIGNERS_FILE, DearKDTrainer

SCRIPT = ROOT / "examples" / "run.py"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    """A tiny grayscale ResNet with the embedded Fashion-MNIST subset's ten labels."""
    return write_teacher(tmp_path_factory.mktemp("teacher"), num_labels=10)


@pytest.fixture(scope="module")
def teacher5_dir(tmp_path_factory) -> str:
    """The same teacher with only five labels: its label space differs from the dataset's."""
    return write_teacher(tmp_path_factory.mktemp("teacher5"), num_labels=5)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env = {**os.environ, **offline, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def foreign_keys(keys) -> list[str]:
    """Keys that belong to the aligners or to the ResNet teacher, never to a saved student."""
    return [k for k in keys if "aligner" in k or k.startswith(("resnet.", "teacher")) or ".resnet." in k]


def assert_no_machine_path(folder: Path) -> None:
    """No text file saved beside the student (card, configs, results) holds a path of this machine."""
    for path in folder.glob("*"):
        if path.is_file() and path.suffix in (".md", ".json"):
            text = path.read_text()
            assert str(folder.parent) not in text and str(ROOT) not in text, path.name


def assert_student_folder(out: Path, teacher: str) -> dict:
    keys = load_file(out / "model.safetensors").keys()
    assert keys and not foreign_keys(keys)
    assert json.loads((out / "config.json").read_text())["model_type"] == "dearkd_vit"
    card = (out / "README.md").read_text()
    assert f"local folder `{Path(teacher).name}`" in card and "DearKD" in card and "alpha" in card
    assert_no_machine_path(out)
    results = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    return results


def test_end_to_end_saves_student_card_and_metrics_and_reloads(tmp_path, teacher_dir):
    out = tmp_path / "out"
    run_cli(*tiny_args(teacher_dir, out))
    assert_student_folder(out, teacher_dir)
    assert not (out / ALIGNERS_FILE).exists()  # only checkpoints carry the aligners

    model, info = AutoModelForImageClassification.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == "DearKDViTForImageClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_labels == 10 and model.config.id2label[9] == "Ankle boot"
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).logits.shape == (2, 10)


def test_yaml_config_file(tmp_path, teacher_dir):
    out = tmp_path / "out"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"teacher_model_name_or_path: {teacher_dir}\n"
        f'config_overrides: "{STUDENT}"\n'
        "image_size: 28\nmax_train_samples: 32\nmax_eval_samples: 16\nnum_train_epochs: 1\n"
        "per_device_train_batch_size: 16\nreport_to: none\nsave_strategy: 'no'\nalpha: 0.25\n"
        f"output_dir: {out}\n"
    )
    metrics = run_script.main([str(config)])
    assert "eval_accuracy" in metrics
    assert_student_folder(out, teacher_dir)
    assert "alpha = 0.25" in (out / "README.md").read_text()


def test_rerun_into_same_output_dir_resumes_from_last_checkpoint(tmp_path, teacher_dir, monkeypatch):
    out = tmp_path / "out"
    args = [*tiny_args(teacher_dir, out, epochs=2), "--save_strategy", "epoch", "--logging_steps", "1"]
    run_script.main(args)
    assert (out / "checkpoint-4" / ALIGNERS_FILE).is_file()  # 64 examples / batch 16 = 4 steps per epoch
    for path in out.iterdir():  # as if killed after the first epoch's checkpoint
        if path.name not in ("checkpoint-4", "dearkd_run.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    loaded, steps = [], []
    load_from_checkpoint, training_step = DearKDTrainer._load_from_checkpoint, DearKDTrainer.training_step

    def spy_load(self, checkpoint, model=None):
        loaded.append(os.path.basename(checkpoint))
        return load_from_checkpoint(self, checkpoint, model)

    def spy_step(self, *a, **kw):
        steps.append(self.state.global_step)
        return training_step(self, *a, **kw)

    monkeypatch.setattr(DearKDTrainer, "_load_from_checkpoint", spy_load)
    monkeypatch.setattr(DearKDTrainer, "training_step", spy_step)
    run_script.main(args)

    assert loaded == ["checkpoint-4"]
    assert steps == [4, 5, 6, 7]  # only the second epoch ran
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    resumed = [log["stage"] for log in state["log_history"] if "loss" in log and log["step"] > 4]
    assert resumed[0] == 1.0 and resumed[-1] == 2.0  # back in stage 1 (stop epoch 1.6 of 2), then the switch


# Everything a push may send: the student as from_pretrained loads it (with its modeling code) and its card.
STUDENT_UPLOAD = {
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "README.md",
    "configuration_dearkd_vit.py",
    "modeling_dearkd_vit.py",
}


@pytest.mark.parametrize(
    "strategy",
    [
        ["--save_strategy", "no"],
        ["--save_strategy", "steps"],  # the default hub_strategy, every_save: a push at each save
        ["--hub_strategy", "checkpoint", "--save_strategy", "steps"],
    ],
)
def test_push_to_hub_uploads_the_student_only(tmp_path, teacher_dir, monkeypatch, strategy):
    """S6: no training_args.bin, trainer_state.json, results, runs/, and from a checkpoint (hub_strategy
    checkpoint) no aligners, optimizer, scheduler or random state: the student's files and card alone."""
    hub = FakeHubApi()
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: hub)
    out = tmp_path / "out"
    run_script.main(
        [*tiny_args(teacher_dir, out), "--push_to_hub", "--hub_model_id", "me/dearkd-tiny", "--save_steps", "4"]
        + ["--report_to", "tensorboard", *strategy]
    )

    assert hub.repos == ["me/dearkd-tiny"]
    assert hub.uploads and all(upload["repo_id"] == "me/dearkd-tiny" for upload in hub.uploads)
    final = hub.uploads[-1]
    assert set(final["files"]) == STUDENT_UPLOAD
    assert (
        f"local folder `{Path(teacher_dir).name}`" in final["card"]
        and "DearKD" in final["card"]
        and "accuracy" in final["card"]
    )
    assert teacher_dir not in final["card"] and 'model="me/dearkd-tiny", trust_remote_code=True' in final["card"]
    for upload in hub.uploads:
        assert set(upload["files"]) <= STUDENT_UPLOAD, upload.get("path_in_repo")
        # Every push of a config naming the remote code (auto_map) sends that code: the repo loads at any time.
        if "config.json" in upload["files"]:
            assert {"configuration_dearkd_vit.py", "modeling_dearkd_vit.py"} <= set(upload["files"]), upload
        for name, keys in upload["tensors"].items():
            assert keys and not foreign_keys(keys), name
    assert "model.safetensors" in final["tensors"]
    if "checkpoint" in strategy:
        pushed = [upload for upload in hub.uploads if upload.get("path_in_repo") == "last-checkpoint"]
        assert len(pushed) == 2 and all(set(upload["files"]) == STUDENT_UPLOAD - {"README.md"} for upload in pushed)


BAD_INPUT = {
    "image-column": (["--image_column_name", "pixels"], ValueError, r"Column 'pixels' not found.*\['image', 'label"),
    "label-column": (["--label_column_name", "target"], ValueError, r"Column 'target' not found.*\['image', 'label"),
    "dataset-path": (["--dataset_name", "/nonexistent/path"], FileNotFoundError, r"--dataset_name /nonexistent/path"),
    "teacher-labels": (["--teacher_model_name_or_path", "TEACHER5"], ValueError, r"5 labels.*distillation_type"),
    "no-teacher": ([], ValueError, r"--teacher_model_name_or_path is required"),
    "tau-nan": (["--tau", "nan"], ValueError, r"tau=nan is not a finite number"),
    "beta-inf": (["--beta", "inf"], ValueError, r"beta=inf is not a finite number"),
    "lr-nan": (["--learning_rate", "nan"], ValueError, r"learning_rate=nan is not a finite number"),
    "mixup-nan": (["--mixup", "nan"], ValueError, r"--mixup=nan is not a finite number"),
    "no-samples": (["--max_train_samples", "0"], ValueError, r"--max_train_samples must be >= 1"),
    "overrides-typo": (["--config_overrides", "hiden_size=64"], ValueError, r"'hiden_size' \(did you mean 'hidden_"),
    "output-under-a-file": (["--output_dir", "FILE/out"], NotADirectoryError, r"--output_dir .*FILE/out: .*is a file"),
    "output-not-writable": (["--output_dir", "/sys/dearkd_out"], PermissionError, r"/sys/dearkd_out: cannot write"),
    "student-path": (["--init_from_vit", "./no_student"], FileNotFoundError, r"--init_from_vit ./no_student: no such"),
    "teacher-path": (["--teacher_model_name_or_path", "./nope/t"], FileNotFoundError, r"./nope/t: no such folder"),
    "teacher-hub": (["--teacher_model_name_or_path", "nope_dir/t"], OSError, r"nope_dir/t: .*Hub cannot be reached"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_before_training(tmp_path, teacher_dir, teacher5_dir, case):
    """Each fails with its one error before any data, model or output folder is made."""
    extra, error, message = BAD_INPUT[case]
    (tmp_path / "FILE").write_text("a file where a folder is expected")
    replace = {"TEACHER5": teacher5_dir, "FILE/out": str(tmp_path / "FILE" / "out")}
    out = tmp_path / "out"
    args = tiny_args(teacher_dir, out) + [replace.get(value, value) for value in extra]
    if not extra:
        index = args.index("--teacher_model_name_or_path")
        del args[index : index + 2]
    with pytest.raises(error, match=message.replace("FILE", str(tmp_path / "FILE"))):
        run_script.main(args)
    assert not out.exists()


def test_same_seed_gives_bit_identical_runs(tmp_path, teacher_dir):
    """The student, the aligners and the data order all come from --seed: same flags, same weights and accuracy."""
    results = []
    for name in ("first", "second"):
        out = tmp_path / name
        run_script.main([*tiny_args(teacher_dir, out, epochs=1), "--save_strategy", "no", "--seed", "3"])
        accuracy = json.loads((out / "all_results.json").read_text())["eval_accuracy"]
        results.append(((out / "model.safetensors").read_bytes(), accuracy))
    assert results[0] == results[1]


def test_non_finite_loss_stops_the_run_without_saving_a_model(tmp_path, teacher_dir, monkeypatch):
    real_loss = dearkd_trainer.stage1_loss

    def nan_loss(*args, **kwargs):
        loss, components = real_loss(*args, **kwargs)
        return loss * float("nan"), components

    monkeypatch.setattr(dearkd_trainer, "stage1_loss", nan_loss)
    out = tmp_path / "out"
    with pytest.raises(
        FloatingPointError, match=r"Training step 1: the loss is nan \(loss_ce=.*loss_kd=.*loss_align="
    ):
        run_script.main(tiny_args(teacher_dir, out))
    assert not (out / "model.safetensors").exists() and not (out / "README.md").exists()


def test_user_error_prints_one_line_not_a_traceback(tmp_path, teacher_dir):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *tiny_args(teacher_dir, tmp_path / "out"), "--tau", "nan"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "error: tau=nan is not a finite number" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def string_label_dataset(tmp_path_factory) -> str:
    """The embedded subset with its labels as strings: the student's class ids become alphabetical."""
    embedded = load_from_disk(str(EMBEDDED))
    names = embedded["train"].features["label"].names
    features = Features({"image": Image(), "label": Value("string")})
    splits = {}
    for split, size in (("train", 64), ("test", 32)):
        part = embedded[split].select(range(size))
        splits[split] = Dataset.from_dict(
            {"image": part["image"], "label": [names[i] for i in part["label"]]}, features=features
        )
    folder = tmp_path_factory.mktemp("string_labels")
    DatasetDict(splits).save_to_disk(str(folder))
    return str(folder)


@pytest.mark.parametrize("teacher_order", ["dataset", "alphabetical", "other-names"])
def test_string_labels_distil_the_same_classes(tmp_path, string_label_dataset, teacher_order, monkeypatch):
    names = load_from_disk(str(EMBEDDED))["train"].features["label"].names
    teacher_names = {"dataset": names, "alphabetical": sorted(names), "other-names": [n.upper() for n in names]}
    teacher = write_teacher(tmp_path / "teacher", 10, teacher_names[teacher_order])
    orders = []
    real_order = dearkd_trainer.teacher_label_order
    monkeypatch.setattr(dearkd_trainer, "teacher_label_order", lambda *a: orders.append(real_order(*a)) or orders[-1])
    args = [*tiny_args(teacher, tmp_path / "out", epochs=1), "--dataset_name", string_label_dataset]
    args += ["--save_strategy", "no"]
    if teacher_order == "other-names":
        with pytest.raises(ValueError, match="are not the student's.*--ignore_label_names"):
            run_script.main(args)
        args.append("--ignore_label_names")
    run_script.main(args)
    student = json.loads((tmp_path / "out" / "config.json").read_text())["id2label"]
    student_names = [student[str(i)] for i in range(10)]
    assert student_names == sorted(names)  # string labels: alphabetical class ids
    if teacher_order == "dataset":  # the teacher's logits are reordered so that column i is the student's class i
        assert [names[i] for i in orders[-1]] == student_names
    else:
        assert orders[-1] is None


@pytest.mark.parametrize("model_type", ["vit", "deit"])
def test_a_grayscale_student_of_another_family_is_saved_taking_rgb(tmp_path, teacher_dir, model_type):
    """A from-scratch grayscale ViT/DeiT is saved with the luma weights folded into its patch embedding: it opens with
    AutoModelForImageClassification as a 3-channel model and, in pipeline() on PIL images of either mode, predicts
    what the trained 1-channel model (its last checkpoint, a resume state kept in the training channels) gives on the
    evaluation transform's pixels."""
    from transformers import AutoImageProcessor, pipeline

    from dearkd_hf.data.transforms import build_transforms
    from dearkd_hf.models.grayscale import FOLDED_KEY

    out = tmp_path / "out"
    args = [*tiny_args(teacher_dir, out), "--model_type", model_type, "--save_strategy", "epoch"]
    run_cli(*args)
    config = json.loads((out / "config.json").read_text())
    assert config["num_channels"] == 3 and config[FOLDED_KEY] is True
    trained = AutoModelForImageClassification.from_pretrained(out / "checkpoint-8").eval()
    assert trained.config.num_channels == 1  # the checkpoint resumes as it trained
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    classify = pipeline("image-classification", model=model, image_processor=processor, top_k=10)
    evaluate = build_transforms(28, processor.image_mean, processor.image_std, 1, train=False)
    for image in load_from_disk(str(EMBEDDED))["test"]["image"][:3]:
        pixels = evaluate({"image": [image], "label": [0]})["pixel_values"][0]
        with torch.no_grad():
            expected = trained(pixel_values=pixels[None]).logits.softmax(-1)[0]
        for mode in ("L", "RGB"):
            scores = {p["label"]: p["score"] for p in classify(image.convert(mode))}
            got = torch.tensor([scores[model.config.id2label[i]] for i in range(10)])
            assert torch.allclose(got, expected, atol=1e-4), mode


def test_a_grayscale_teacher_on_rgb_images_says_the_colour_is_dropped(tmp_path, teacher_dir):
    """RGB training images with a grayscale teacher: the student is built grayscale (the teacher's channels), and the
    run says so, with the way to keep colour; grayscale images with that teacher get no such line."""
    from datasets import DatasetDict

    small = load_from_disk(str(EMBEDDED))
    rgb = DatasetDict(
        {
            split: small[split]
            .select(range(64))
            .map(lambda ex: {"image": ex["image"].convert("RGB")}, keep_in_memory=True)
            for split in ("train", "test")
        }
    )
    rgb.save_to_disk(str(tmp_path / "rgb"))
    args = [*tiny_args(teacher_dir, tmp_path / "out", epochs=1), "--save_strategy", "no"]
    result = run_cli(*args, "--dataset_name", str(tmp_path / "rgb"))
    assert "RGB training images are converted to grayscale" in result.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_channels"] == 1
    result = run_cli(*[a if a != str(tmp_path / "out") else str(tmp_path / "gray") for a in args])
    assert "converted to grayscale" not in result.stderr


def test_a_grayscale_student_runs_in_the_pipeline_as_evaluated(tmp_path, teacher_dir):
    """pipeline("image-classification") converts every image to RGB; the grayscale DearKD ViT reads RGB pixels as
    the grayscale image, so on PIL images of either mode it predicts what the trainer's evaluation transform gives."""
    from transformers import AutoImageProcessor, pipeline

    from dearkd_hf.data.transforms import build_transforms

    out = tmp_path / "out"
    run_cli(*tiny_args(teacher_dir, out))
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    assert model.config.num_channels == 1
    classify = pipeline("image-classification", model=model, image_processor=processor, top_k=10)
    evaluate = build_transforms(28, processor.image_mean, processor.image_std, 1, train=False)
    image = load_from_disk(str(EMBEDDED))["test"][0]["image"]
    for mode in ("L", "RGB"):
        pixels = evaluate({"image": [image.convert(mode)], "label": [0]})["pixel_values"][0]
        with torch.no_grad():
            expected = model(pixel_values=pixels[None]).logits.softmax(-1)[0]
        scores = {p["label"]: p["score"] for p in classify(image.convert(mode))}
        got = torch.tensor([scores[model.config.id2label[i]] for i in range(10)])
        assert torch.allclose(got, expected, atol=1e-4), mode
