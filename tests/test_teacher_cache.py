"""The teacher cache (METHOD.md section 6): views replayed exactly, outputs equal to the teacher's, resumable and
extendable writing, training with no teacher loaded, and stale caches refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import safetensors.torch
import torch
from accelerate.state import AcceleratorState
from datasets import load_from_disk
from helpers import EMBEDDED, ROOT, STUDENT, example_script, launch_two_processes, run_script, write_teacher
from huggingface_hub.utils import filter_repo_objects
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from dearkd_hf import DearKDConfig, DearKDTrainer
from dearkd_hf import teacher_cache as teacher_cache_module
from dearkd_hf.alignment import teacher_outputs
from dearkd_hf.data.transforms import TRAIN_CROP_SCALE, ReplayableView, open_image
from dearkd_hf.models.teachers import load_teacher
from dearkd_hf.teacher_cache import CACHE_FILE, TOP_K_FILL_MARGIN, CachedViews, TeacherCache, names_cached_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
cache_script = example_script("cache_teacher")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    return write_teacher(tmp_path_factory.mktemp("teacher"), num_labels=10)


def data_flags(samples: int = 48) -> list[str]:
    return ["--config_overrides", STUDENT, "--image_size", "28", "--max_train_samples", str(samples)]


def cache_args(teacher: str, output_dir: Path, *extra: str, samples: int = 48) -> list[str]:
    base = ["--teacher_model_name_or_path", teacher, "--output_dir", str(output_dir), "--batch_size", "8"]
    base += ["--shard_size", "16"]  # 3 shards per view, each from 2 teacher batches
    return base + data_flags(samples) + list(extra)


def make_cache(teacher: str, output_dir: Path, *extra: str, samples: int = 48) -> Path:
    try:
        cache_script.main(cache_args(teacher, output_dir, *extra, samples=samples))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # the script's PartialState must not leak
    return output_dir


def shard_bytes(folder: Path) -> dict[str, str]:
    """A digest of each shard's Arrow data, by shard name."""
    return {
        shard.name: hashlib.sha256(b"".join(p.read_bytes() for p in sorted(shard.glob("*.arrow")))).hexdigest()
        for shard in sorted((folder / "shards").glob("batch-*"))
    }


def test_a_view_is_drawn_from_its_indices_alone_and_replayed_exactly():
    """draw: the same (seed, index, view) gives the same crop and flip, other indices others, within the live crop's
    scale; apply: exactly the crop, resize, flip and normalisation done by hand."""
    first = ReplayableView.draw(0, 5, 0, 40, 30)
    assert first == ReplayableView.draw(0, 5, 0, 40, 30)
    draws = {ReplayableView.draw(seed, index, view, 40, 30) for seed in (0, 1) for index in (5, 6) for view in (0, 1)}
    assert len(draws) == 8
    for (top, left, height, width), _ in draws:
        assert 0 <= top <= 30 - height and 0 <= left <= 40 - width
        assert TRAIN_CROP_SCALE[0] - 0.05 <= height * width / 1200 <= TRAIN_CROP_SCALE[1]
    assert {flip for _, flip in (ReplayableView.draw(0, i, 0, 40, 30) for i in range(40))} == {True, False}

    image = open_image(load_from_disk(str(EMBEDDED))["train"][0]["image"])
    view = ReplayableView(28, (0.3,), (0.2,), 1)
    crop, flip = (2, 3, 20, 24), True
    by_hand = TF.horizontal_flip(TF.resized_crop(image.convert("L"), 2, 3, 20, 24, [28, 28], antialias=True))
    expected = (v2.functional.to_dtype(TF.pil_to_tensor(by_hand), torch.float32, scale=True) - 0.3) / 0.2
    torch.testing.assert_close(view.apply(image, crop, flip), expected)


def test_cached_outputs_are_the_teachers_outputs_on_the_replayed_views(teacher_dir, tmp_path):
    folder = make_cache(teacher_dir, tmp_path / "cache", "--num_views", "2")
    cache = TeacherCache.load(str(folder))
    assert cache.num_views == 2 and cache.num_images == 48 and cache.grid == (7, 7)
    teacher = load_teacher(teacher_dir)
    train = run_script.load_image_datasets(run_script.DataTrainingArguments(max_train_samples=48), seed=42)["train"]
    indices, views = [0, 17, 47, 3], [0, 1, 1, 0]
    rows = cache.rows(indices, views)
    pixels = torch.stack(
        [cache.view.apply(train[i]["image"], rows["crop"][j], bool(rows["flip"][j])) for j, i in enumerate(indices)]
    )
    layers = [pair.teacher_layer for pair in cache.pairs]
    logits, targets = teacher_outputs(teacher, pixels, (cache.view.mean, cache.view.std), layers, cache.grid)
    torch.testing.assert_close(torch.from_numpy(rows["logits"]), logits, atol=2e-3, rtol=2e-3)  # stored in fp16
    assert len(targets) == len(rows["targets"]) == 2
    for stored, live in zip(rows["targets"], targets):
        torch.testing.assert_close(torch.from_numpy(stored).float(), live, atol=1e-2, rtol=1e-2)
    # Two views of an image differ; the first view of a 1-view read is view 0.
    assert not np.array_equal(cache.rows([5], [0])["crop"], cache.rows([5], [1])["crop"])
    assert TeacherCache.load(str(folder), num_views=1).view_of(range(48), epoch=3, seed=0) == [0] * 48


def test_a_killed_cache_resumes_and_an_extended_one_keeps_its_views_bit_for_bit(teacher_dir, tmp_path):
    whole = shard_bytes(make_cache(teacher_dir, tmp_path / "whole", "--num_views", "2"))
    killed = tmp_path / "killed"
    make_cache(teacher_dir, killed, "--num_views", "2", "--max_shards", "2")
    assert not (killed / CACHE_FILE).exists() and len(list((killed / "shards").glob("batch-*"))) == 2
    with pytest.raises(ValueError, match="no finished teacher cache"):
        TeacherCache.load(str(killed))
    assert shard_bytes(make_cache(teacher_dir, killed, "--num_views", "2")) == whole

    extended = shard_bytes(make_cache(teacher_dir, killed, "--num_views", "3"))
    assert len(extended) == 9 and {name: extended[name] for name in whole} == whole
    assert json.loads((killed / CACHE_FILE).read_text())["num_views"] == 3
    make_cache(teacher_dir, killed, "--num_views", "1")  # fewer views: nothing to write, the cache keeps its 3
    assert TeacherCache.load(str(killed)).num_views == 3


def test_a_top_k_cache_keeps_the_top_logits_and_fills_the_rest_below_them(teacher_dir, tmp_path):
    full = TeacherCache.load(str(make_cache(teacher_dir, tmp_path / "full", "--num_views", "1")))
    top3 = make_cache(teacher_dir, tmp_path / "top3", "--num_views", "1", "--logits_top_k", "3")
    top3 = TeacherCache.load(str(top3))
    a, b = full.rows(range(48), [0] * 48)["logits"], top3.rows(range(48), [0] * 48)["logits"]
    np.testing.assert_array_equal(a.argmax(1), b.argmax(1))
    kept = np.argsort(-a, axis=1)[:, :3]
    np.testing.assert_array_equal(np.take_along_axis(a, kept, 1), np.take_along_axis(b, kept, 1))
    rest = b.copy()
    np.put_along_axis(rest, kept, np.nan, axis=1)
    expected = np.take_along_axis(a, kept, 1).min(1, keepdims=True) - TOP_K_FILL_MARGIN
    np.testing.assert_allclose(np.nanmax(rest, 1, keepdims=True), expected)
    with pytest.raises(ValueError, match=r"logits_top_k=11 must lie in \[0, 10\]"):
        make_cache(teacher_dir, tmp_path / "bad", "--logits_top_k", "11")


def test_a_cache_that_does_not_fit_on_the_disk_is_refused_before_any_shard(teacher_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(teacher_cache_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 1000))
    with pytest.raises(ValueError, match=r"needs .* more but the disk has 1\.0 KB free.*--num_views"):
        make_cache(teacher_dir, tmp_path / "cache", "--num_views", "4")
    assert "48 images x 4 views, 2,401 bytes per view" in capsys.readouterr().out
    assert not list((tmp_path / "cache").glob("shards/batch-*"))


def test_a_folder_with_another_cache_is_refused(teacher_dir, tmp_path):
    folder = make_cache(teacher_dir, tmp_path / "cache", "--num_views", "1")
    names = load_from_disk(str(EMBEDDED))["train"].features["label"].names
    other = write_teacher(tmp_path / "other_teacher", 10, names=names[::-1])  # the same weights, other labels
    with pytest.raises(ValueError, match="teacher-cache run with a different configuration .*teacher"):
        make_cache(other, folder, "--num_views", "1")
    with pytest.raises(ValueError, match="--rand_augment: a teacher cache stores the default training views"):
        make_cache(teacher_dir, tmp_path / "augmented", "--rand_augment")


def test_stage_1_trains_from_the_cache_with_the_teacher_folder_removed(teacher_dir, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    cache = make_cache(str(teacher), tmp_path / "cache", "--num_views", "2")
    shutil.rmtree(teacher)
    output_dir = tmp_path / "run"
    metrics = run_script.main(
        ["--teacher_cache", str(cache), "--output_dir", str(output_dir), "--num_train_epochs", "2"]
        + data_flags()
        + ["--max_eval_samples", "16", "--per_device_train_batch_size", "16", "--report_to", "none"]
        + ["--logging_steps", "1"]
    )
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    logs = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    stage1 = [log for log in logs if log.get("stage") == 1.0 and "loss_align" in log]
    assert stage1 and all(log["loss_align"] > 0 and log["loss_kd"] > 0 for log in stage1)
    assert any(log.get("stage") == 2.0 for log in logs)
    run = json.loads((output_dir / "dearkd_run.json").read_text())
    assert run["teacher"]["cache"] == TeacherCache.load(str(cache)).fingerprint
    assert (output_dir / "model.safetensors").is_file()


def cached_trainer(cache: Path, output_dir: Path, teacher_model: str | None = None, **config) -> DearKDTrainer:
    """A DearKDTrainer on the embedded subset the cache was written from (the Trainer API, no teacher)."""
    model_args = run_script.ModelArguments(config_overrides=STUDENT)
    data_args = run_script.DataTrainingArguments(max_train_samples=48, image_size=28)
    dataset = run_script.load_image_datasets(data_args, seed=42)
    loaded = TeacherCache.load(str(cache))
    student = run_script.build_student(model_args, run_script.label_names(dataset["train"]), loaded.teacher, 28)
    processor = run_script.build_image_processor(model_args, loaded.teacher)
    args = DearKDConfig(output_dir=str(output_dir), per_device_train_batch_size=8, report_to="none", **config)
    trainer = DearKDTrainer(
        model=student, teacher_model=teacher_model, args=args, teacher_cache=str(cache), processing_class=processor
    )
    mean, std = trainer.student_normalization
    transformed = run_script.with_transforms(dataset, 28, mean, std, 1)
    trainer.train_dataset = transformed["train"]
    return trainer


def test_a_cached_batch_carries_the_teachers_outputs_on_its_own_pixels(teacher_dir, tmp_path):
    """The Trainer API: each stage-1 batch's pixel values are the views the cached outputs were computed on."""
    cache = make_cache(teacher_dir, tmp_path / "cache", "--num_views", "2")
    trainer = cached_trainer(cache, tmp_path / "run")
    assert trainer.teacher.module is None  # nothing loaded
    batch = next(iter(trainer.get_train_dataloader()))
    teacher = load_teacher(teacher_dir)
    layers = [pair.teacher_layer for pair in trainer.alignment_pairs]
    logits, targets = teacher_outputs(teacher, batch["pixel_values"], trainer.student_normalization, layers, (7, 7))
    torch.testing.assert_close(batch["teacher_logits"], logits, atol=2e-3, rtol=2e-3)
    for cached, live in zip(batch["teacher_targets"], targets):
        torch.testing.assert_close(cached.float(), live, atol=1e-2, rtol=1e-2)


def test_the_caches_teacher_is_checked_by_its_weights_not_its_path(teacher_dir, tmp_path, monkeypatch):
    """Run from another folder, the same relative teacher path can name other weights: refused, as the card would
    name a teacher whose outputs training never used. A copy of the cache's teacher anywhere is accepted."""
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(teacher_dir, first / "teacher")
    shutil.copytree(teacher_dir, second / "teacher")
    weights = second / "teacher" / "model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    name = next(key for key, value in tensors.items() if value.is_floating_point())
    tensors[name] = tensors[name] + 1.0
    safetensors.torch.save_file(tensors, weights)
    monkeypatch.chdir(first)
    cache = make_cache("teacher", tmp_path / "cache", "--num_views", "1")
    assert cached_trainer(cache, tmp_path / "run1", teacher_model=str(tmp_path / "a" / "teacher")).teacher is not None
    monkeypatch.chdir(second)
    with pytest.raises(ValueError, match="'teacher' is not the teacher the cache was written with"):
        cached_trainer(cache, tmp_path / "run2", teacher_model="teacher")


def test_the_teacher_check_reads_the_cached_logits(teacher_dir, tmp_path):
    """With a cache the teacher is not loaded: the check scores its stored logits on the views stage 1 reads first,
    which agree with the live teacher run on those views."""
    cache = make_cache(teacher_dir, tmp_path / "cache", "--num_views", "1")
    trainer = cached_trainer(cache, tmp_path / "run")
    check = trainer._check_teacher()
    assert trainer.teacher.module is None and check is not None and check.num_images == 48
    views = CachedViews(TeacherCache.load(str(cache)), trainer.train_dataset, 42).__getitems__(list(range(48)))
    pixels = torch.stack([view["pixel_values"] for view in views])
    logits, _ = teacher_outputs(load_teacher(teacher_dir), pixels, trainer.student_normalization, [], (7, 7))
    labels = torch.tensor([view["labels"] for view in views])
    assert check.accuracy == pytest.approx(float((logits.argmax(-1) == labels).float().mean()), abs=1.5 / 48)


def test_a_stale_cache_is_refused_in_one_line(teacher_dir, tmp_path):
    cache = make_cache(teacher_dir, tmp_path / "cache", "--num_views", "1")
    base = ["--teacher_cache", str(cache), "--num_train_epochs", "1", "--report_to", "none"]
    cases = {
        "image size 28, this run has 32": data_flags()[:3] + ["32", "--max_train_samples", "48"],
        "alignment pairs": data_flags() + ["--alignment_pairs", "1:resnet.encoder.stages.0"],
        "training images 48, this run has 40": data_flags(40),
        r"training data \(digest": data_flags() + ["--seed", "7"],
        "is not the teacher the cache was written with": data_flags() + ["--teacher_model_name_or_path", "resnet18"],
        "--teacher_cache with --mixup": data_flags() + ["--mixup", "0.8"],
    }
    for index, (message, flags) in enumerate(cases.items()):
        with pytest.raises(ValueError, match=message) as error:
            run_script.main(base + flags + ["--output_dir", str(tmp_path / f"run{index}")])
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="teacher_cache_views=3: .* holds 1 views per image"):
        run_script.main(base + data_flags() + ["--teacher_cache_views", "3", "--output_dir", str(tmp_path / "r")])


def test_accelerate_launch_two_processes_writes_the_cache_of_one_process(teacher_dir, tmp_path):
    single = shard_bytes(make_cache(teacher_dir, tmp_path / "single", "--num_views", "2"))
    script = ROOT / "examples" / "cache_teacher.py"
    result = launch_two_processes(script, cache_args(teacher_dir, tmp_path / "double", "--num_views", "2"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert shard_bytes(tmp_path / "double") == single  # shards depend on (seed, image, view) only
    assert result.stdout.count("bytes per view") == 1  # the storage line once, from the main process


def test_push_to_hub_uploads_the_finished_cache_and_reads_it_back(teacher_dir, tmp_path, monkeypatch):
    created, uploaded = [], []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: created.append((repo_id, kw)))
    files = []

    def upload(repo_id, folder_path, repo_type, ignore_patterns=None):
        uploaded.append((repo_id, folder_path, repo_type))
        names = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).glob("**/*") if p.is_file())
        files.extend(filter_repo_objects(names, ignore_patterns=ignore_patterns))  # as upload_folder filters them

    monkeypatch.setattr(cache_script, "upload_folder", upload)
    folder = make_cache(teacher_dir, tmp_path / "cache", "--num_views", "1", "--push_to_hub", "--hub_model_id", "me/c")
    assert created == [("me/c", {"repo_type": "dataset", "exist_ok": True})]
    assert uploaded == [("me/c", str(folder), "dataset")]
    assert "teacher_cache.json" in files and "dearkd.lock" not in files  # the lock names the host and command
    downloads = []
    fake_download = lambda repo_id, repo_type: downloads.append((repo_id, repo_type)) or str(folder)  # noqa: E731
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert TeacherCache.load("me/c").num_images == 48 and downloads == [("me/c", "dataset")]


def test_push_to_hub_that_cannot_reach_the_hub_fails_before_caching(teacher_dir, tmp_path):
    with pytest.raises(OSError, match=r"--push_to_hub: the dataset repository me/c cannot be created.*nothing was"):
        make_cache(teacher_dir, tmp_path / "cache", "--push_to_hub", "--hub_model_id", "me/c")
    assert not (tmp_path / "cache" / "shards").exists()


def test_a_timm_teachers_folder_names_the_cache_written_from_it(tmp_path, monkeypatch):
    """A timm teacher is recorded under timm's name for it (local-dir:<folder>, hf-hub:timm/<name>); the run's
    --teacher_model_name_or_path, the folder as given (or another path to it), names that teacher."""
    folder = tmp_path / "timm_teacher"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    assert names_cached_teacher(str(folder), f"local-dir:{folder}")
    assert names_cached_teacher("timm_teacher", f"local-dir:{folder}")  # relative, the same folder
    assert names_cached_teacher("timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k")
    assert names_cached_teacher(str(folder), str(folder))  # a transformers folder: recorded as given
    (tmp_path / "other").mkdir()
    assert not names_cached_teacher(str(tmp_path / "other"), f"local-dir:{folder}")
    assert not names_cached_teacher("resnet18", f"local-dir:{folder}")


def test_the_progress_bar_obeys_tqdm_disable(teacher_dir, tmp_path):
    """TQDM_DISABLE=1 (read by tqdm when it is imported) silences the bar, e.g. in a benchmark's log."""
    script = ROOT / "examples" / "cache_teacher.py"
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # importing benchmarks.teacher_cache sets it
    env.update(PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for name, extra in (("shown", {}), ("quiet", {"TQDM_DISABLE": "1"})):
        command = [sys.executable, str(script), *cache_args(teacher_dir, tmp_path / name, "--num_views", "1")]
        result = subprocess.run(command, env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert ("Caching the teacher's outputs" in result.stderr) == (name == "shown")
