"""The benchmarks, an importable package: run each from the repository root as ``python -m benchmarks.<name>``
(benchmarks/README.md lists them and holds their results). ``data_efficiency`` is a package (methods, harness,
report) that the other accuracy benchmarks build on; :mod:`benchmarks.harness` holds what every benchmark shares
(the results file, the worker processes, mean ± std over seeds).

The environment every benchmark runs in is set here: Python imports this package before any of its modules, both
for ``python -m benchmarks.<name>`` and for ``import benchmarks.<name>``, so these variables are in place before a
benchmark imports torch, transformers or tqdm (some are read only then). Values already set are kept; the worker
processes a benchmark starts inherit them.
"""

import os

ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",  # benchmarks never touch the Hub
    "TOKENIZERS_PARALLELISM": "false",
    # No progress bars (e.g. the teacher-cache writer's per-view bar, datasets' map bars): they would fill the
    # workers' logs. tqdm reads it when it is imported.
    "TQDM_DISABLE": "1",
}

for _name, _value in ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
