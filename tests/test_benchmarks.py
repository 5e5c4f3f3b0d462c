"""Smoke tests of benchmarks/speed.py and benchmarks/data_efficiency.py: quick mode, tiny sizes, JSON schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
METHODS = {
    "teacher",
    "scratch",
    "scratch_mhca",
    "deit",
    "dearkd",
    "dearkd_no_mhca",
    "dearkd_no_align",
    "dearkd_no_stop",
    "datafree_di",
    "datafree_bpid",
}


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_speed_quick_writes_ratios_and_timings(tmp_path):
    output = tmp_path / "speed.json"
    run_script("speed.py", "--quick", "--repeats=2", "--warmup=1", "--gen_iterations=2", f"--output={output}")
    result = json.loads(output.read_text())
    for key in ("stage1_vs_deit", "stage1_vs_limit", "stage2_vs_plain", "stage1_peak_mem_vs_deit"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["generator_images_per_s"] > 0
    configs = {"plain", "deit_kd", "dearkd_s1", "dearkd_s2", "teacher_fwd"}
    assert configs <= set(result["timings"]) and configs <= set(result["peak_memory_bytes"])
    assert all(len(result["raw_times_s"][name]) == 2 for name in configs)
    assert set(result["targets"]) == {"stage1_vs_deit", "stage1_vs_limit", "stage2_vs_plain"}
    assert result["stage2_switch"]["teacher_is_none"] is True
    assert result["stage2_switch"]["stage_after_switch"] == 2


@pytest.mark.slow
def test_data_efficiency_quick_writes_rows_table_plot_and_skips_done_rows(tmp_path):
    args = [
        "--quick",
        "--seeds",
        "0",
        "--fractions",
        "0.5",
        "--max_train_samples=40",
        "--max_eval_samples=40",
        "--num_generated=8",
        "--gen_batch_size=8",
        f"--results_dir={tmp_path / 'results'}",
        f"--work_dir={tmp_path / 'work'}",
    ]
    run_script("data_efficiency.py", *args)
    path = tmp_path / "results" / "data_efficiency_quick.json"
    data = json.loads(path.read_text())
    rows = data["rows"]
    assert {row["method"] for row in rows} == METHODS and len(rows) == len(METHODS)
    for row in rows:
        assert {"method", "train_fraction", "seed", "accuracy", "epochs", "wall_s"} <= set(row)
        assert row["train_fraction"] == 0.5 and row["seed"] == 0 and row["epochs"] == 1
        assert 0.0 <= row["accuracy"] <= 1.0 and row["wall_s"] > 0
    table = (tmp_path / "results" / "data_efficiency_quick.md").read_text()
    assert all(f"| {method} |" in table for method in METHODS)
    assert (tmp_path / "results" / "data_efficiency_quick.png").read_bytes()[:4] == b"\x89PNG"

    # A re-run finds every row done and trains nothing.
    rerun = run_script("data_efficiency.py", *args)
    assert "fraction=0.5 seed=0" not in rerun.stdout
    assert json.loads(path.read_text())["rows"] == rows

    # Another worker's rows (same configuration) fold in without training; a foreign configuration is refused.
    other = tmp_path / "worker" / "data_efficiency_quick.json"
    other.parent.mkdir()
    extra = {**rows[0], "seed": 7, "accuracy": 0.5}
    other.write_text(json.dumps({"config": data["config"], "rows": [rows[1], extra]}))
    merged = run_script("data_efficiency.py", *args, "--merge_from", str(other))
    assert "fraction=0.5 seed=7" not in merged.stdout
    assert json.loads(path.read_text())["rows"] == rows + [extra]
    other.write_text(json.dumps({"config": {**data["config"], "epochs": 99}, "rows": [extra]}))
    with pytest.raises(AssertionError, match="another configuration"):
        run_script("data_efficiency.py", *args, "--merge_from", str(other))
