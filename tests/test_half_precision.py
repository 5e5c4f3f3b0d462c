"""The DearKD ViT in half precision: `from_pretrained(..., dtype=...)`, `pipeline(..., dtype=...)`, and transformers'
eager-against-sdpa check in fp32, fp16 and bf16 (MHCA: METHOD.md section 4; the half-precision paths: docs/hub.md)."""

import copy

import numpy as np
import pytest
import torch
from helpers import tiny_dearkd_config, with_random_positional_weights
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import ViTImageProcessor, pipeline
from transformers.testing_utils import set_config_for_less_flaky_test, set_model_for_less_flaky_test
from transformers.utils.import_utils import is_torch_bf16_available_on_device, is_torch_fp16_available_on_device

from dearkd_hf.modeling import DearKDViTConfig, DearKDViTForImageClassification, DearKDViTModel

PATCH = 4
GRID = 6
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (atol, rtol) of transformers' test_eager_matches_sdpa_inference on CPU (tests/test_modeling_common.py), per dtype
TOLERANCES = {torch.float32: (1e-6, 1e-4), torch.float16: (5e-3, 5e-3), torch.bfloat16: (1e-2, 1e-2)}


def saved_student(folder, **overrides) -> DearKDViTForImageClassification:
    """A tiny student with trained-looking positional weights (sharp, broad and repulsive heads), saved to `folder`."""
    torch.manual_seed(0)
    model = DearKDViTForImageClassification(tiny_dearkd_config(GRID, PATCH, **{"drop_path_rate": 0.0, **overrides}))
    model.eval()
    with_random_positional_weights(model)
    with torch.no_grad():
        for layer in model.dearkd_vit.layers:
            layer.attention.positional_weight[0, 0] = 0.5  # a head that prefers distant tokens: far row maxima
    model.save_pretrained(folder)
    return model


def images(batch_size: int = 2, size: int = GRID * PATCH) -> torch.Tensor:
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_from_pretrained_in_half_precision_matches_float32(tmp_path, attn_implementation, dtype):
    reference = saved_student(tmp_path)
    model = DearKDViTForImageClassification.from_pretrained(
        tmp_path, dtype=DTYPES[dtype], attn_implementation=attn_implementation
    ).eval()
    assert {p.dtype for p in model.parameters()} == {DTYPES[dtype]}
    with torch.no_grad():
        logits = model(images()).logits
        expected = reference(images()).logits
    assert logits.dtype == DTYPES[dtype]
    atol, rtol = TOLERANCES[DTYPES[dtype]]
    torch.testing.assert_close(logits.float(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_pipeline_with_a_half_dtype_matches_float32(tmp_path, attn_implementation, dtype):
    saved_student(tmp_path)
    ViTImageProcessor(size={"height": GRID * PATCH, "width": GRID * PATCH}).save_pretrained(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, (GRID * PATCH, GRID * PATCH, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)

    def scores(**kwargs) -> dict[str, float]:
        classify = pipeline(
            "image-classification",
            model=str(tmp_path),
            trust_remote_code=True,
            model_kwargs={"attn_implementation": attn_implementation},
            **kwargs,
        )
        assert classify.model.config._attn_implementation == attn_implementation
        return {row["label"]: row["score"] for row in classify(image, top_k=5)}, classify.model.dtype

    half, half_dtype = scores(dtype=DTYPES[dtype])
    full, _ = scores()
    assert half_dtype == DTYPES[dtype]
    atol, rtol = TOLERANCES[DTYPES[dtype]]
    torch.testing.assert_close(
        torch.tensor([half[label] for label in full]), torch.tensor(list(full.values())), atol=atol, rtol=rtol
    )


# transformers' ModelTesterMixin.test_eager_matches_sdpa_inference as it runs on CPU, for both model classes, on a
# config the size of transformers' ViT model tester (30 px, patch 2: a 15 x 15 grid, MHCA in both blocks): compared,
# the classifier's logits and the backbone's last hidden state. Its padding-side and attention-mask variants collapse
# into these (the model takes no `attention_mask`); its extra fp32 case with output_attentions=True is the last one.
@pytest.mark.parametrize("model_class", [DearKDViTForImageClassification, DearKDViTModel])
@pytest.mark.parametrize(
    ("dtype", "enable_kernels", "output_attentions"),
    [(dtype, kernels, False) for dtype in ("fp32", "fp16", "bf16") for kernels in (False, True)]
    + [("fp32", False, True)],
)
def test_eager_matches_sdpa_inference(tmp_path, model_class, dtype, enable_kernels, output_attentions):
    torch_dtype = DTYPES[dtype]
    available = {"fp16": is_torch_fp16_available_on_device, "bf16": is_torch_bf16_available_on_device}
    if dtype in available and not available[dtype]("cpu"):
        pytest.skip(f"{dtype} is not supported on this CPU")
    config = DearKDViTConfig(
        image_size=30,
        patch_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=10,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    set_config_for_less_flaky_test(config)
    torch.manual_seed(42)
    model_class(config).save_pretrained(tmp_path)
    model_sdpa = model_class.from_pretrained(tmp_path, dtype=torch_dtype, attn_implementation="sdpa")
    model_sdpa = model_sdpa.eval()
    model_eager = copy.deepcopy(model_sdpa)
    model_eager.set_attn_implementation("eager")
    model_eager = model_eager.eval()
    set_model_for_less_flaky_test(model_eager)
    set_model_for_less_flaky_test(model_sdpa)
    pixel_values = torch.randn(7, 3, 30, 30, generator=torch.Generator().manual_seed(0)).to(torch_dtype)
    backends = [SDPBackend.MATH]
    if enable_kernels:
        backends += [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    inputs = dict(pixel_values=pixel_values, output_hidden_states=True, output_attentions=output_attentions)
    with torch.no_grad(), sdpa_kernel(backends):
        outputs_eager = model_eager(**inputs)
        outputs_sdpa = model_sdpa(**inputs)
    if model_class is DearKDViTModel:
        compared_eager, compared_sdpa = outputs_eager.hidden_states[-1], outputs_sdpa.hidden_states[-1]
    else:
        compared_eager, compared_sdpa = outputs_eager.logits, outputs_sdpa.logits
    atol, rtol = TOLERANCES[torch_dtype]
    torch.testing.assert_close(compared_sdpa, compared_eager, atol=atol, rtol=rtol)


def test_dtype_casts_leave_the_mhca_geometry_exact():
    """Relative positions reach 2 * 13^2 = 338 on a 14 x 14 grid, which bf16 cannot hold (336); the geometry buffers
    are integers, which no dtype cast touches, and the positional term is computed in float32."""
    config = DearKDViTConfig(
        image_size=56, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    )
    model = DearKDViTForImageClassification(config)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    assert buffers and all(not buffer.is_floating_point() for buffer in buffers.values())
    assert max(buffer.max() for buffer in buffers.values()) == 338
    model.to(torch.bfloat16).half().float()
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, buffers[name], rtol=0, atol=0, msg=name)
    attention = model.to(torch.bfloat16).dearkd_vit.layers[0].attention
    bias = attention.positional_bias(2 + 14 * 14)
    assert bias.dtype == torch.float32
    expected = torch.einsum(
        "ijc,hc->hij",
        buffers["dearkd_vit.layers.0.attention.relative_positions"].float(),
        attention.positional_weight.float(),
    )
    torch.testing.assert_close(bias[:, 2:, 2:], expected, rtol=0, atol=0)
