"""Tools that are not benchmarks: the GPU readiness check (``bash tools/gpu_check.sh``), its summary, and a
profiler of one training step. Run from the repository root as ``python -m tools.<name>``."""
