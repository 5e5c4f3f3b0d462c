"""dearkd_hf: DearKD (data-efficient early knowledge distillation for vision transformers) on the Hugging Face stack."""

__version__ = "0.1.0"
