"""``python -m benchmarks.teacher_cache [flags]`` (from the repository root); see the package docstring."""

from .cli import main

main()
