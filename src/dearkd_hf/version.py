"""The package's version: read by ``dearkd_hf.__version__``, the model card and ``setup.py`` (written once, here)."""

__version__ = "0.1.0"
