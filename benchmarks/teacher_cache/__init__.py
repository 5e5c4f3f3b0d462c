"""Accuracy of DearKD trained from a teacher cache (examples/cache_teacher.py, ``run.py --teacher_cache``) against
DearKD with the live teacher, paired by seed, at the same epochs and with otherwise identical flags.

Two settings, each run through an existing harness (its runner, teachers and flags), not a copy of it:

    fmnist_10pct   benchmarks.data_efficiency at train fraction 0.1 (6000 images, 30 epochs, its 64-wide student and
                   small ResNet teacher): the live row is that harness's ``dearkd`` row
    grid_cell      one cell of benchmarks.robustness: task fmnist10, 450 training images, 250 steps, teacher resnet18
                   (timm, trained by the harness), its 96-wide 4-block student: the live row is its ``dearkd`` row

For each setting and seed: the live-teacher row (library defaults, the harness's own ``dearkd`` flags), then ONE
cache of ``--cache_views`` (16) views per training image written by examples/cache_teacher.py with the run's data and
student flags and seed, then one row per ``--views`` K (16, 4, 1: a 16-view cache serves each through
``--teacher_cache_views K``) with the live row's flags plus ``--teacher_cache DIR --teacher_cache_views K``.

Rows are appended to ``<results_dir>/<prefix>.json`` as they finish and skipped on a re-run (``prefix``:
``teacher_cache``, ``teacher_cache_quick`` with --quick). The JSON holds ``rows`` (one per setting, K, seed:
``accuracy``, ``live_accuracy`` of the same seed, ``bytes_per_view``, ``stage1_vs_plain``, the cache's size and build
time), ``live`` (the live rows) and ``caches`` (one per setting and seed). ``<prefix>.md``: mean ± std per (setting,
K), paired differences against live, and the target: K=16's mean within 0.5 points of live's.

``stage1_vs_plain`` (a stage-1 step from the cache over a plain labels-only step) is read from the speed benchmark's
teacher-cache results file under benchmarks/results (a ``*cache*speed*.json`` / ``*speed*cache*.json``, or
``--speed_results``) when one exists; null otherwise.

    python -m benchmarks.teacher_cache --dataset_dir outputs/fashion_mnist_full  # about 1 hour on 2 CPU cores
    python -m benchmarks.teacher_cache --quick  # embedded subset, tiny models: about a minute

The package: :mod:`.settings` (the two settings, the cache script's argv, what a cache holds), :mod:`.report` (the
speed ratio, the table and the target), :mod:`.cli` (flags, the results file, the runs and the workers); the results
file and the workers are every benchmark's (:mod:`benchmarks.harness`).
"""

from .cli import SIZES, Results, main, parse_args, run_config, run_unit, run_units, unit_done
from .report import TARGET_POINTS, ratio_for, refresh_speed, speed_ratio, summary, write_table
from .settings import SETTING_CLASSES, SETTINGS, FashionMnist10, GridCell, cache_argv, cache_info

__all__ = [
    "SETTINGS",
    "SETTING_CLASSES",
    "SIZES",
    "TARGET_POINTS",
    "FashionMnist10",
    "GridCell",
    "Results",
    "cache_argv",
    "cache_info",
    "main",
    "parse_args",
    "ratio_for",
    "refresh_speed",
    "run_config",
    "run_unit",
    "run_units",
    "speed_ratio",
    "summary",
    "unit_done",
    "write_table",
]
