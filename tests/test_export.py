"""The saved DearKD ViT exports: `torch.export` (and its .pt2 file) and ONNX run in onnxruntime, both attention paths,
a dynamic batch, outputs within 1e-4 of the eager model in fp32 (commands and limits: docs/hub.md; MHCA:
METHOD.md section 4)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import tiny_dearkd_config, with_random_positional_weights
from torch.export import Dim

from dearkd_hf.modeling import DearKDViTForImageClassification

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch.onnx.export(dynamo=True) translates with it

PATCH = 4
GRID = 6
OUTPUTS = ("logits", "cls_logits", "distillation_logits")


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A tiny student with trained-looking positional weights (MHCA bias floor active), saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("student")
    config = tiny_dearkd_config(GRID, PATCH, mhca_locality_strength=3.0)
    torch.manual_seed(0)
    model = DearKDViTForImageClassification(config)
    with_random_positional_weights(model)
    model.save_pretrained(folder)
    return folder


def load(folder, attn_implementation: str, dtype: torch.dtype = torch.float32) -> DearKDViTForImageClassification:
    return DearKDViTForImageClassification.from_pretrained(
        folder, attn_implementation=attn_implementation, dtype=dtype
    ).eval()


def images(batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(batch_size))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_torch_export_with_a_dynamic_batch_matches_eager(saved_folder, tmp_path, attn_implementation):
    model = load(saved_folder, attn_implementation)
    program = torch.export.export(model, (images(2),), dynamic_shapes={"pixel_values": {0: Dim("batch")}})
    torch.export.save(program, tmp_path / "student.pt2")
    exported = torch.export.load(tmp_path / "student.pt2").module()
    with torch.no_grad():
        expected = model(images(3))
        out = exported(images(3))
    for name in OUTPUTS:
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=0, atol=1e-4, msg=name)


LOAD_WITH_TORCH_ALONE = """
import importlib.util, os, sys
sys.path[:] = [p for p in sys.path if p and not os.path.isdir(os.path.join(p, 'dearkd_hf'))]
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__name__.lower() and 'dearkd' not in repr(f)]
assert importlib.util.find_spec('dearkd_hf') is None, 'dearkd_hf must not be importable here'
import torch
module = torch.export.load(FOLDER + '/student.pt2').module()
logits, cls_logits, distillation_logits = module(torch.load(FOLDER + '/images.pt'), return_dict=False)
assert 'transformers' not in sys.modules
torch.save(logits, FOLDER + '/logits.pt')
"""


def test_a_tuple_export_loads_with_torch_alone(saved_folder, tmp_path):
    """With the default ModelOutput, torch.export.load needs the model's code (the output class is a pytree node
    registered on import); with return_dict=False the program returns a tuple and loads where only torch is."""
    model = load(saved_folder, "sdpa")
    shapes = {"pixel_values": {0: Dim("batch")}, "return_dict": None}
    program = torch.export.export(model, (images(2),), kwargs={"return_dict": False}, dynamic_shapes=shapes)
    torch.export.save(program, tmp_path / "student.pt2")
    torch.save(images(3), tmp_path / "images.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = f"FOLDER = {str(tmp_path)!r}\n" + LOAD_WITH_TORCH_ALONE
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=120)
    with torch.no_grad():
        expected = model(images(3)).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-4)


def export_onnx(model, path, pixel_values: torch.Tensor) -> None:
    with torch.no_grad():  # needed in half precision on the sdpa path (docs/hub.md); harmless otherwise
        program = torch.onnx.export(
            model,
            (pixel_values,),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=list(OUTPUTS),
            dynamic_shapes={"pixel_values": {0: Dim("batch")}},
            verbose=False,
        )
    program.save(str(path))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_onnx_export_runs_in_onnxruntime_and_matches_eager(saved_folder, tmp_path, attn_implementation):
    model = load(saved_folder, attn_implementation)
    export_onnx(model, tmp_path / "student.onnx", images(2))
    session = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == list(OUTPUTS)
    results = session.run(list(OUTPUTS), {"pixel_values": images(3).numpy()})
    with torch.no_grad():
        expected = model(images(3))
    for name, result in zip(OUTPUTS, results, strict=True):
        torch.testing.assert_close(torch.from_numpy(result), getattr(expected, name), rtol=0, atol=1e-4, msg=name)


def test_float16_onnx_export_of_the_sdpa_path_runs_under_no_grad(saved_folder, tmp_path):
    """Half precision is not held to 1e-4: fp16's own rounding (transformers' fp16 tolerance, 5e-3)."""
    model = load(saved_folder, "sdpa", torch.float16)
    export_onnx(model, tmp_path / "student.onnx", images(2).half())
    session = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixel_values": images(3).numpy().astype(np.float16)})
    with torch.no_grad():
        expected = model(images(3).half()).logits
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=5e-3, atol=5e-3)
