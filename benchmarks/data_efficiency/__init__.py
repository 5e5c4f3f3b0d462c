"""Test accuracy of DearKD, its baselines and ablations, for 10% and 100% of Fashion-MNIST's training set.

Every row is trained with the example scripts' ``main()`` (what a user runs), with the same student size,
augmentation (the scripts' default random-resized-crop + flip) and seeds, and evaluated on the real test set. Every
row of a fraction trains the same epochs: ``min(30, 5 / fraction)`` by default (30 at 10%, 5 at 100%; see
``harness.epochs_for``), so that small fractions are not stopped long before they converge. The rows
(``methods.METHODS``, the one description of them that the runner and the report read too):

{methods}

Each (train_fraction, seed) has its own teacher, trained with that seed on that fraction, which every student of the
pair distils from. Rows are appended to the JSON as they finish and skipped on a re-run, so a killed run loses at
most the row in progress. Outputs (``<prefix>`` is ``data_efficiency``, ``data_efficiency_quick`` with --quick):
``<results_dir>/<prefix>.json`` ({{"config", "rows": [{{"method", "train_fraction", "seed", "accuracy", "epochs",
"wall_s", ...}}]}}), ``<prefix>.md`` (mean and standard deviation over seeds) and ``<prefix>.png``.

    python -m benchmarks.data_efficiency            # the full benchmark: about two hours on 2 CPU cores (2 workers)
    python -m benchmarks.data_efficiency --quick    # embedded 5k/1k subset, tiny models: a few minutes

The package: :mod:`.methods` (the rows), :mod:`.harness` (configuration, the results file's keys, runner),
:mod:`.report` (table, targets, plot), :mod:`.cli` (flags and the loop over rows); the results file and the workers
are every benchmark's (:mod:`benchmarks.harness`). The names other scripts use are importable from the package
itself (``from benchmarks.data_efficiency import Runner, parse_args``).
"""

from benchmarks.harness import RESULTS_DIR, ROOT

from .cli import SIZES, main, parse_args
from .harness import (
    EXAMPLES,
    Results,
    Runner,
    ensure_dataset,
    epochs_for,
    load_example,
    row_epochs,
    run_config,
    stored_path,
)
from .methods import BY_NAME, METHOD_NAMES, METHODS, Method, methods_text
from .report import summary, targets, write_plot, write_reports, write_table

__doc__ = __doc__.format(methods=methods_text())

__all__ = [
    "BY_NAME",
    "EXAMPLES",
    "METHODS",
    "METHOD_NAMES",
    "RESULTS_DIR",
    "ROOT",
    "SIZES",
    "Method",
    "Results",
    "Runner",
    "ensure_dataset",
    "epochs_for",
    "load_example",
    "main",
    "methods_text",
    "parse_args",
    "row_epochs",
    "run_config",
    "stored_path",
    "summary",
    "targets",
    "write_plot",
    "write_reports",
    "write_table",
]
