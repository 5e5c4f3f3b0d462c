"""examples/prepare_fashion_mnist.py on the real Debian IDX files, with small per-class counts."""

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
from datasets import ClassLabel, Image, load_from_disk

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "prepare_fashion_mnist.py"
spec = importlib.util.spec_from_file_location("prepare_fashion_mnist", SCRIPT)
prepare_fashion_mnist = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare_fashion_mnist)

needs_source = pytest.mark.skipif(
    not Path(prepare_fashion_mnist.DEFAULT_SOURCE_DIR).is_dir(), reason="apt-get install dataset-fashion-mnist"
)


@needs_source
def test_balanced_subset(tmp_path):
    argv = ["--train_per_class", "3", "--test_per_class", "2", "--output_dir", str(tmp_path)]
    prepare_fashion_mnist.main(argv)
    dataset = load_from_disk(str(tmp_path))
    assert set(dataset) == {"train", "test"}
    assert isinstance(dataset["train"].features["image"], Image)
    assert dataset["train"].features["label"] == ClassLabel(names=prepare_fashion_mnist.FASHION_MNIST_LABELS)
    assert dataset["train"].features["label"].names[-1] == "Ankle boot"
    assert Counter(dataset["train"]["label"]) == dict.fromkeys(range(10), 3)
    assert Counter(dataset["test"]["label"]) == dict.fromkeys(range(10), 2)
    image = dataset["test"][0]["image"]
    assert (image.mode, image.size) == ("L", (28, 28))


@needs_source
def test_same_seed_same_subset(tmp_path):
    for name in ("a", "b"):
        prepare_fashion_mnist.main(
            ["--train_per_class", "2", "--test_per_class", "1", "--output_dir", str(tmp_path / name)]
        )
    first, second = (load_from_disk(str(tmp_path / name))["train"] for name in ("a", "b"))
    assert [x.tobytes() for x in first["image"]] == [x.tobytes() for x in second["image"]]


def test_missing_source_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        prepare_fashion_mnist.main(["--source_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
