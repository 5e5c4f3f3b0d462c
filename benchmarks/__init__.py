"""The benchmarks, an importable package: run each from the repository root as ``python -m benchmarks.<name>``
(benchmarks/README.md lists them). ``data_efficiency`` is a package (methods, harness, report) that
``datafree_priors`` builds on."""
