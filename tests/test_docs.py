"""The documentation holds together: every relative link in the README, docs/ and benchmarks/README.md points at a
file that exists (and at a heading that exists, where it names one), and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 200

FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """The page without code: fenced blocks and inline code spans (whose brackets are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markdown links reduced to their text, lower case, punctuation dropped (word
    characters, hyphens and spaces kept), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a markdown page, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        slug = github_slug(heading)
        result.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return result


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text())) if not EXTERNAL.match(target)]


def test_the_pages_exist():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    expected = {"cli", "data", "datafree", "development", "hub", "reliability", "scale", "students"}
    assert {"README.md", "benchmarks/README.md", *(f"docs/{name}.md" for name in expected)} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_slug_rule():
    assert github_slug("Speed: step time and peak memory") == "speed-step-time-and-peak-memory"
    assert github_slug("BPID's forms (`bpid_forms`)") == "bpids-forms-bpid_forms"
    assert github_slug("`examples/train_teacher.py`") == "examplestrain_teacherpy"
    assert github_slug("What is the paper's and what is ours") == "what-is-the-papers-and-what-is-ours"


def test_the_link_checker_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n[a](other.md#x) ![b](img.png) [c](https://example.com) `[d](code.md)`\n\n```\n[e](fenced.md)\n```\n"
    )
    assert relative_links(page) == ["other.md#x", "img.png"]
    assert anchors(page) == {"title"}


@pytest.mark.slow
def test_the_readme_trainer_snippet_runs_as_written(tmp_path, monkeypatch):
    """The README's Python snippet, run as written except for where things live and how long it trains: a tiny
    teacher folder in place of outputs/demo/teacher, a scratch output folder, 1 epoch on 1% of the data."""
    import timm

    from dearkd_hf.data.loading import EMBEDDED_DATASET, label_names, load_named_dataset

    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL).group(1)
    names = label_names(load_named_dataset(str(EMBEDDED_DATASET))["train"])
    teacher = timm.create_model("test_resnet", num_classes=10, in_chans=1)  # a tiny timm CNN (layer1, layer2, ...)
    data_config = {"mean": (0.5,), "std": (0.5,), "input_size": (1, 28, 28)}
    timm.models.save_for_hf(
        teacher, tmp_path / "teacher", model_config={"label_names": names}, data_config=data_config
    )
    replacements = {
        '"outputs/demo/teacher"': repr(str(tmp_path / "teacher")),
        '"outputs/my-dearkd"': repr(str(tmp_path / "student")),
        "num_train_epochs=10": "num_train_epochs=1",
        "distillation_stop_epoch=8": "distillation_stop_epoch=0.5",
        "DataTrainingArguments(train_fraction=0.1)": "DataTrainingArguments(train_fraction=0.01)",
    }
    for old, new in replacements.items():
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exec(compile(code, "README.md", "exec"), {})
    card = (tmp_path / "student" / "README.md").read_text()
    assert (tmp_path / "student" / "model.safetensors").is_file() and "license: apache-2.0" in card


@pytest.mark.slow
def test_the_demo_prints_teacher_and_three_students(tmp_path):
    """make demo's script, at tiny sizes: the four rows of its table, each with an accuracy and a wall time."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "DEMO_OUTPUT_DIR": str(tmp_path / "demo"),
        "DEMO_TEACHER_EPOCHS": "1",
        "DEMO_EPOCHS": "1",
        "DEMO_TRAIN_FRACTION": "0.02",
        "DEMO_MAX_EVAL_SAMPLES": "32",
        "DEMO_SEEDS": "0 1",
    }
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "demo.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "accuracy" not in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| CNN teacher (timm resnet18, 5,000 images)",
        "| ViT student without a teacher",
        "| ViT student, DeiT-style logit KD",
        "| ViT student, DearKD",
    ]
    assert all(0.0 <= float(row.split(" | ")[1]) <= 1.0 for row in rows)
    # Each student row: two seeds and their mean; the paired DearKD - DeiT differences beside DeiT's own range.
    per_seed = [[float(v) for v in row.split(" | ")[2].split(", ")] for row in rows[1:]]
    assert all(len(values) == 2 and float(row.split(" | ")[1]) == pytest.approx(sum(values) / 2, abs=1e-4)
               for row, values in zip(rows[1:], per_seed))  # fmt: skip
    assert "DearKD - DeiT KD, paired by seed: " in result.stdout and "DeiT KD's own range over seeds" in result.stdout
