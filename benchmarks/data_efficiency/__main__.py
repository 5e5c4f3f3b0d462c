"""``python -m benchmarks.data_efficiency [flags]`` (from the repository root); see the package docstring."""

from .cli import main

main()
