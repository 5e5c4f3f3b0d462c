"""The benchmarks, an importable package: run each from the repository root as ``python -m benchmarks.<name>``
(benchmarks/README.md lists them and holds their results). ``data_efficiency`` is a package (methods, harness,
report) that the other accuracy benchmarks build on."""
