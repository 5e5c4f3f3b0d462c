import re

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "(.+)"', open("src/dearkd_hf/version.py", encoding="utf-8").read()).group(1)

setup(
    name="dearkd_hf",
    version=VERSION,
    description="DearKD (data-efficient early knowledge distillation for ViTs) for the Hugging Face stack",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"dearkd_hf": ["data/metrics/*/*.py"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<2.15",
        "torchvision>=0.19,<0.30",
        "transformers>=5.0,<6",
        "datasets>=3.0",
        "accelerate>=1.2",
        "evaluate>=0.4.3",
        "timm>=1.0.12",
        "huggingface_hub>=1.0",
        "safetensors>=0.4",
        "tqdm",
        "pyyaml",
    ],
    extras_require={
        # onnx / onnxruntime / onnxscript: tests/test_export.py (torch.onnx.export(dynamo=True) needs onnxscript)
        "dev": [
            "pytest>=8",
            "ruff>=0.8",
            "scikit-learn",
            "matplotlib",
            "tensorboard",
            "onnx",
            "onnxruntime",
            "onnxscript",
        ],
    },
)
