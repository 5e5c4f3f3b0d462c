"""No subnormal floats in the default student's attention, forward or backward, on either attention path.

MHCA's positional term (METHOD.md section 4) puts distant tokens' logits hundreds below the row maximum; unbounded,
their softmax probabilities, and the gradients through them, land in float32's subnormal range, where x86 arithmetic
slows down many times (2.15x a training step on an Intel Xeon; docs/hub.md). The model floors the positional bias
(`MHCA_BIAS_RANGE` below each row's maximum), so every probability stays a normal float. Checked here on the default
student (DeiT-Ti size, 224 px) at initialisation and after a few optimizer steps: the probabilities, the gradient of
the output, the probabilities and the logits (softmax's backward), and those of the query, key and value.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_dearkd_config

from dearkd_hf.modeling import DearKDViTConfig, DearKDViTForImageClassification, modeling_dearkd_vit


def subnormals(tensor: torch.Tensor) -> int:
    return int(((tensor != 0) & (tensor.abs() < torch.finfo(tensor.dtype).tiny)).sum())


class AttentionSpy:
    """Counts subnormal floats in what goes through attention, keyed by (what, block)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.block = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.counts[name] = self.counts.get(name, 0) + subnormals(tensor.detach())

    def watch(self, probs: torch.Tensor, output: torch.Tensor, value: torch.Tensor, inputs: dict) -> None:
        """`probs`: the forward's probabilities (float32); hooks on the output (whose gradient gives softmax's
        backward: dP = dO V^T, dS = P (dP - sum_j P dP)) and on the query, key and value."""
        block = self.block
        self.block += 1
        self.add(f"probabilities, block {block}", probs)
        if not output.requires_grad:
            return

        def output_hook(grad: torch.Tensor) -> None:
            self.add(f"d output, block {block}", grad)
            grad_probs = (grad @ value.detach().transpose(-2, -1)).float()
            self.add(f"d probabilities, block {block}", grad_probs)
            grad_logits = probs * (grad_probs - (probs * grad_probs).sum(-1, keepdim=True))
            self.add(f"d logits, block {block}", grad_logits)

        output.register_hook(output_hook)
        for name, tensor in inputs.items():
            if tensor.requires_grad:
                tensor.register_hook(lambda grad, name=name: self.add(f"d {name}, block {block}", grad))


@pytest.fixture
def spy(monkeypatch) -> AttentionSpy:
    spy = AttentionSpy()
    eager = modeling_dearkd_vit.eager_attention_forward
    sdpa = F.scaled_dot_product_attention

    def eager_spy(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        context, probs = eager(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        # probs as the model returns them, and (B, H, T, d) context before the transpose for the hooks
        output = context.transpose(1, 2)
        spy.watch(probs.detach().float(), output, value, {"query": query, "key": key, "value": value})
        return output.transpose(1, 2), probs

    def sdpa_spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        output = sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        with torch.no_grad():  # the fused kernel's probabilities, recomputed from what it was given
            scale = query.shape[-1] ** -0.5 if scale is None else scale
            logits = (query @ key.transpose(-2, -1)).float() * scale
            probs = (logits if attn_mask is None else logits + attn_mask.float()).softmax(dim=-1)
        spy.watch(probs, output, value, {"query": query, "key": key, "value": value})
        return output

    monkeypatch.setattr(modeling_dearkd_vit, "eager_attention_forward", eager_spy)
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa_spy)
    return spy


def training_step(model, spy: AttentionSpy, optimizer=None) -> dict[str, int]:
    generator = torch.Generator().manual_seed(len(spy.counts))
    pixel_values = torch.randn(2, 3, 224, 224, generator=generator)
    labels = torch.randint(0, model.config.num_labels, (2,), generator=generator)
    spy.counts, spy.block = {}, 0
    model(pixel_values, labels=labels).loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad()
    return {name: count for name, count in spy.counts.items() if count}


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_default_student_attention_has_no_subnormal_floats(spy, attn_implementation):
    torch.manual_seed(0)
    model = DearKDViTForImageClassification._from_config(DearKDViTConfig(), attn_implementation=attn_implementation)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert training_step(model, spy) == {}, "at initialisation"
    assert len([name for name in spy.counts if name.startswith("probabilities")]) == 12
    assert any(name.startswith("d logits") for name in spy.counts)  # the backward was seen
    model.zero_grad()
    for _ in range(3):
        training_step(model, spy, optimizer)
    assert training_step(model, spy) == {}, "after 3 AdamW steps"


def test_bias_floor_lift_by_hand():
    bias = torch.tensor([[0.0, -10.0, -40.0, -100.0], [50.0, 20.0, 19.0, 25.0], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[0.0, 0.0, 10.0, 70.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert modeling_dearkd_vit.MHCA_BIAS_RANGE == 30.0
    torch.testing.assert_close(modeling_dearkd_vit.bias_floor_lift(bias), expected, rtol=0, atol=0)
    assert not modeling_dearkd_vit.bias_floor_lift(bias.requires_grad_()).requires_grad


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_the_floor_moves_outputs_and_gradients_negligibly(monkeypatch, attn_implementation):
    """Against the unfloored formulation (the floor at infinity), on a 14 x 14 grid where the default locality puts
    the bias down to -338: outputs and gradients agree within the eager / sdpa tolerance (1e-5)."""
    config = DearKDViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=5
    )
    torch.manual_seed(0)
    model = DearKDViTForImageClassification._from_config(config, attn_implementation=attn_implementation)
    model.train()
    pixel_values = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 3])

    def step():
        torch.manual_seed(1)  # the same drop-path draws
        model.zero_grad()
        out = model(pixel_values, labels=labels)
        out.loss.backward()
        return out.logits.detach(), {name: param.grad.clone() for name, param in model.named_parameters()}

    attention = model.dearkd_vit.layers[0].attention
    assert modeling_dearkd_vit.bias_floor_lift(attention.positional_bias(198)).amax() > 200  # the floor is active
    logits, grads = step()
    monkeypatch.setattr(modeling_dearkd_vit, "MHCA_BIAS_RANGE", float("inf"))
    assert modeling_dearkd_vit.bias_floor_lift(attention.positional_bias(198)).amax() == 0
    expected_logits, expected_grads = step()
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_sdpa_inference_passes_the_floored_bias_as_the_mask_and_matches_training_and_eager(monkeypatch):
    """Without a gradient for v_h the sdpa path skips the position channels (nothing to copy); its outputs are the
    channel form's and the eager reference's, the floor active (locality 3 on a 6 x 6 grid)."""
    config = tiny_dearkd_config(6, 4, mhca_locality_strength=3.0)
    torch.manual_seed(0)
    model = DearKDViTForImageClassification._from_config(config, attn_implementation="sdpa").eval()
    assert model.config._attn_implementation == "sdpa"
    eager = DearKDViTForImageClassification._from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    pixel_values = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    attention = model.dearkd_vit.layers[0].attention
    assert modeling_dearkd_vit.bias_floor_lift(attention.positional_bias(2 + 36)).amax() > 0
    training_form = model(pixel_values).logits.detach()  # v_h needs a gradient: the channel form
    monkeypatch.setattr(attention, "with_position_channels", None)  # must not be called without a gradient
    with torch.no_grad():
        inference_form = model(pixel_values).logits
        expected = eager(pixel_values).logits
    assert model.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    torch.testing.assert_close(inference_form, training_form, rtol=0, atol=1e-5)
    torch.testing.assert_close(inference_form, expected, rtol=0, atol=1e-6)
