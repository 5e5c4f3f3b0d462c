"""Where the embedded example dataset is: resolved here only, for the data loading (:mod:`dearkd_hf.data`), the
example scripts, the tests and the benchmarks. (Whether a name is a local path or a Hub id is
:func:`dearkd_hf.checks.looks_like_local_path`.)
"""

from __future__ import annotations

from pathlib import Path

# Written by examples/prepare_fashion_mnist.py and committed (in a source checkout: src/dearkd_hf/paths.py -> the
# repository root -> examples/data), so the examples, tests and quick benchmarks run offline.
EMBEDDED_DATASET = Path(__file__).resolve().parents[2] / "examples" / "data" / "fashion_mnist_small"
