"""The DearKD ViT student on tiny configs: MHCA, outputs, save/load (incl. remote code), from_vit, validation."""

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_dearkd_config, with_random_positional_weights
from transformers import (
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

from dearkd_hf.attention_distance import mean_attention_distance
from dearkd_hf.modeling import DearKDViTConfig, DearKDViTForImageClassification, head_centres

PATCH = 8
GRID = 4
NUM_PREFIX = 2


def tiny_config(**overrides) -> DearKDViTConfig:
    return tiny_dearkd_config(GRID, PATCH, **overrides)


def tiny_model(**overrides) -> DearKDViTForImageClassification:
    torch.manual_seed(0)
    return DearKDViTForImageClassification(tiny_config(**overrides))


def images(batch_size: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(seed))


def tiny_vit_config(**overrides) -> dict:
    kwargs = dict(
        image_size=GRID * PATCH,
        patch_size=PATCH,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
    )
    return {**kwargs, **overrides}


# --- MHCA ------------------------------------------------------------------------------------------------------------


def test_head_centres_follow_documented_grid():
    assert head_centres(4).tolist() == [[-1, -1], [0, -1], [-1, 0], [0, 0]]
    assert head_centres(9)[4].tolist() == [0, 0]
    assert head_centres(3).shape == (3, 2)


def test_strong_locality_gives_convolution_like_heads():
    model = tiny_model(mhca_locality_strength=50.0, mhca_layers=[0]).eval()
    attention = model.dearkd_vit.layers[0].attention
    with torch.no_grad():
        for proj in (attention.q_proj, attention.k_proj):
            proj.weight.zero_()
            proj.bias.zero_()
        probs = model(images(), output_attentions=True).attentions[0]
    patch_probs = probs[..., NUM_PREFIX:, NUM_PREFIX:]
    centres = head_centres(4).long()
    for head, (cx, cy) in enumerate(centres.tolist()):
        for row in range(1, GRID - 1):
            for col in range(1, GRID - 1):
                query = row * GRID + col
                expected_key = (row + cy) * GRID + (col + cx)
                assert (patch_probs[:, head, query].argmax(-1) == expected_key).all()
    local = mean_attention_distance(probs, (GRID, GRID), PATCH, NUM_PREFIX)
    uniform = torch.full_like(probs, 1.0 / probs.shape[-1])
    assert local < 1.5 * PATCH
    assert local < 0.6 * mean_attention_distance(uniform, (GRID, GRID), PATCH, NUM_PREFIX)


def test_zero_positional_term_is_plain_softmax_attention():
    model = tiny_model(mhca_layers=[0]).eval()
    attention = model.dearkd_vit.layers[0].attention
    with torch.no_grad():
        attention.positional_weight.zero_()
    x = torch.randn(2, NUM_PREFIX + GRID * GRID, 32, generator=torch.Generator().manual_seed(3))

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(2, -1, 4, 8).transpose(1, 2)

    q, k, v = (heads(proj(x)) for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
    expected_probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    expected = attention.o_proj((expected_probs @ v).transpose(1, 2).reshape(2, -1, 32))
    eager, probs = attention(x, output_attentions=True)
    fused, no_probs = attention(x, output_attentions=False)
    torch.testing.assert_close(probs, expected_probs)
    torch.testing.assert_close(eager, expected)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    assert no_probs is None


def test_positional_bias_matches_formula_and_spares_prefix_tokens():
    attention = tiny_model().dearkd_vit.layers[0].attention
    bias = attention.positional_bias(NUM_PREFIX + GRID * GRID)
    assert bias[:, :NUM_PREFIX].abs().sum() == 0 and bias[:, :, :NUM_PREFIX].abs().sum() == 0
    i, j = 5, 14  # p_i = (1, 1), p_j = (2, 3): delta = (1, 2)
    r = torch.tensor([5.0, 1.0, 2.0])
    torch.testing.assert_close(bias[:, NUM_PREFIX + i, NUM_PREFIX + j], attention.positional_weight @ r)
    cx, cy = head_centres(4).T  # a = 1: -(|delta - c|^2 - |c|^2)
    torch.testing.assert_close(
        bias[:, NUM_PREFIX + i, NUM_PREFIX + j], -((1 - cx) ** 2 + (2 - cy) ** 2) + cx**2 + cy**2
    )


def test_gradients_reach_positional_weights():
    # MHCA in the first block: in the last block the bias only touches patch rows, which no head reads
    model = tiny_model(mhca_layers=[0]).train()
    assert not hasattr(model.dearkd_vit.layers[1].attention, "positional_weight")
    model(images(), labels=torch.tensor([0, 3])).loss.backward()
    grad = model.dearkd_vit.layers[0].attention.positional_weight.grad
    assert grad is not None and grad.abs().sum() > 0


# --- outputs ---------------------------------------------------------------------------------------------------------


def test_outputs_shapes_and_logits_average():
    model = tiny_model().eval()
    out = model(images(), labels=torch.tensor([1, 4]), output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(out.logits, (out.cls_logits + out.distillation_logits) / 2)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([1, 4])))
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, NUM_PREFIX + GRID * GRID, 32)
    assert len(out.attentions) == 2 and out.attentions[1].shape == (2, 4, 18, 18)
    assert model(images()).hidden_states is None
    assert isinstance(model(images(), return_dict=False), tuple)


def test_soft_labels_use_cross_entropy_with_probabilities():
    model = tiny_model().eval()
    soft = torch.softmax(torch.randn(2, 5), dim=-1)
    out = model(images(), labels=soft)
    expected = -(soft * torch.log_softmax(out.logits, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(out.loss, expected)


def test_without_distillation_token_logits_are_class_head():
    model = tiny_model(use_distillation_token=False).eval()
    out = model(images(), output_hidden_states=True)
    assert out.distillation_logits is None
    torch.testing.assert_close(out.logits, out.cls_logits)
    assert out.hidden_states[0].shape[1] == 1 + GRID * GRID


def test_predict_keys_are_ignored():
    assert set(DearKDViTConfig.keys_to_ignore_at_inference) == {
        "cls_logits",
        "distillation_logits",
        "hidden_states",
        "attentions",
    }


# --- save / load -----------------------------------------------------------------------------------------------------


def test_save_and_auto_load_give_identical_outputs(tmp_path):
    model = tiny_model(mhca_layers=[0]).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "modeling_dearkd_vit.py").exists() and (tmp_path / "configuration_dearkd_vit.py").exists()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DearKDViTForImageClassification)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images()).logits, model(images()).logits, rtol=0, atol=0)


REMOTE_SCRIPT = """
import importlib.util, os, sys
# hide dearkd_hf: the repo's src, any folder holding the package, and editable-install finders
sys.path[:] = [p for p in sys.path if p and p != SRC and not os.path.isdir(os.path.join(p, 'dearkd_hf'))]
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__name__.lower() and 'dearkd' not in repr(f)]
assert importlib.util.find_spec('dearkd_hf') is None, 'dearkd_hf must not be importable here'
import torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(FOLDER, trust_remote_code=True).eval()
assert 'dearkd_hf' not in type(model).__module__, type(model).__module__
with torch.no_grad():
    logits = model(torch.load(FOLDER + '/images.pt')).logits
torch.save(logits, FOLDER + '/remote_logits.pt')
"""


def test_trust_remote_code_loads_without_dearkd_hf(tmp_path):
    folder = tmp_path / "model"
    model = tiny_model(mhca_layers=[1]).eval()
    model.save_pretrained(folder)
    torch.save(images(), folder / "images.pt")
    src = str(Path(__file__).resolve().parents[1] / "src")
    script = f"SRC = {src!r}\nFOLDER = {str(folder)!r}\n" + REMOTE_SCRIPT
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH="")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=120)
    with torch.no_grad():
        expected = model(images()).logits
    torch.testing.assert_close(torch.load(folder / "remote_logits.pt"), expected, rtol=0, atol=0)


# --- from_vit --------------------------------------------------------------------------------------------------------


def test_from_vit_folder_copies_weights(tmp_path):
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(**tiny_vit_config())).eval()
    vit.save_pretrained(tmp_path)
    student = DearKDViTForImageClassification.from_vit(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            student.dearkd_vit.embeddings.patch_embeddings(images()), vit.vit.embeddings.patch_embeddings(images())
        )
    assert student.config.id2label == vit.config.id2label
    torch.testing.assert_close(student.dearkd_vit.embeddings.cls_token, vit.vit.embeddings.cls_token)
    torch.testing.assert_close(student.cls_classifier.weight, vit.classifier.weight)
    assert student.dearkd_vit.layers[0].attention.positional_weight.shape == (4, 3)


def test_from_vit_without_mhca_or_distillation_reproduces_vit():
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(**tiny_vit_config())).eval()
    student = DearKDViTForImageClassification.from_vit(vit, mhca_layers=[], use_distillation_token=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(student(images()).logits, vit(images()).logits)


def test_from_deit_copies_distillation_token_and_heads():
    torch.manual_seed(0)
    deit = DeiTForImageClassificationWithTeacher(DeiTConfig(**tiny_vit_config())).eval()
    with torch.no_grad():
        deit.deit.embeddings.distillation_token.normal_()
    student = DearKDViTForImageClassification.from_vit(deit, mhca_layers=[]).eval()
    embeddings = student.dearkd_vit.embeddings
    torch.testing.assert_close(embeddings.distillation_token, deit.deit.embeddings.distillation_token)
    torch.testing.assert_close(embeddings.position_embeddings, deit.deit.embeddings.position_embeddings)
    with torch.no_grad():
        source_patches = deit.deit.embeddings.patch_embeddings(images())
        torch.testing.assert_close(embeddings.patch_embeddings(images()), source_patches)
        torch.testing.assert_close(student(images()).logits, deit(images()).logits)


def test_from_vit_override_num_labels_starts_fresh_heads():
    vit = ViTForImageClassification(ViTConfig(**tiny_vit_config()))
    student = DearKDViTForImageClassification.from_vit(vit, num_labels=3)
    assert student.config.num_labels == 3 and student.cls_classifier.out_features == 3


# --- validation ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "argument"),
    [
        (dict(image_size=30), "image_size"),
        (dict(hidden_size=30), "hidden_size"),
        (dict(mhca_layers=[0, 2]), "mhca_layers"),
        (dict(mhca_layers=[-1]), "mhca_layers"),
    ],
)
def test_bad_config_raises_value_error_naming_argument(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    "size, expected", [(16, 16), ((16, 16), 16), ([28, 28], 28), ((16, 8), None), ([4, 2], None), ((), None)]
)
def test_the_model_files_copy_of_square_side_agrees_with_the_core(size, expected):
    """modeling_dearkd_vit.py keeps its own copy (trust_remote_code); the core's students.square_side is the same."""
    from dearkd_hf.modeling import modeling_dearkd_vit
    from dearkd_hf.models.students import square_side

    assert square_side(size) == modeling_dearkd_vit.square_side(size) == expected


def test_config_docstring_example_runs_and_geometry_is_checked_once(monkeypatch):
    import doctest

    from dearkd_hf.modeling import configuration_dearkd_vit

    finder = doctest.DocTestFinder(recurse=False)
    (example,) = finder.find(DearKDViTConfig, "DearKDViTConfig", globs={})
    result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(example)
    assert result.attempted >= 3 and result.failed == 0

    calls = []
    original = configuration_dearkd_vit.DearKDViTConfig.check_geometry
    monkeypatch.setattr(DearKDViTConfig, "check_geometry", lambda self: calls.append(1) or original(self))
    DearKDViTForImageClassification(tiny_config())
    assert len(calls) == 1


# --- attention implementations (eager, sdpa) -------------------------------------------------------------------------


def _eager_twin(model: DearKDViTForImageClassification) -> DearKDViTForImageClassification:
    twin = DearKDViTForImageClassification._from_config(copy.deepcopy(model.config), attn_implementation="eager")
    twin.load_state_dict(model.state_dict())
    return twin


def _step(model: DearKDViTForImageClassification, pixel_values: torch.Tensor, **kwargs):
    model.zero_grad()
    out = model(pixel_values, labels=torch.arange(pixel_values.shape[0]) % 5, output_hidden_states=True, **kwargs)
    out.loss.backward()
    return out, {name: param.grad.clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize(
    ("grid", "patch", "hidden", "heads", "distillation"),
    [(2, 8, 32, 4, True), (4, 8, 32, 4, True), (7, 4, 48, 3, False), (14, 16, 192, 3, True)],
)
def test_sdpa_gives_the_eager_formulations_outputs_and_gradients(grid, patch, hidden, heads, distillation):
    """The sdpa path (positional term as extra query/key channels) against the eager reference (bias on logits)."""
    config = DearKDViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        num_labels=5,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        use_distillation_token=distillation,
        mhca_layers=[0, 1],
    )
    torch.manual_seed(0)
    model = DearKDViTForImageClassification(config).train()
    with_random_positional_weights(model)
    eager = _eager_twin(model).train()
    assert model.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    pixel_values = torch.randn(3, 3, grid * patch, grid * patch, generator=torch.Generator().manual_seed(2))
    out, grads = _step(model, pixel_values)
    expected, expected_grads = _step(eager, pixel_values)
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=1e-5)
    for ours, theirs in zip(out.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-5, msg=name)
    assert grads["dearkd_vit.layers.0.attention.positional_weight"].abs().sum() > 0


def test_position_features_give_the_bias_up_to_a_row_constant_and_spare_prefix_rows():
    attention = tiny_model().dearkd_vit.layers[0].attention
    with torch.no_grad():
        attention.positional_weight.normal_()
        query_features, key_features = attention.position_features()
        logits = torch.einsum("if,jhf->hij", query_features, key_features) * attention.scaling
        bias = attention.positional_bias(NUM_PREFIX + GRID * GRID)
    difference = logits - bias  # constant along each row
    torch.testing.assert_close(difference, difference[..., :1].expand_as(difference), rtol=0, atol=1e-5)
    assert logits[:, :NUM_PREFIX].abs().max() == 0  # prefix rows: no positional term at all


def test_attentions_requested_use_the_eager_path_and_attn_implementation_is_honoured(tmp_path):
    model = tiny_model().eval()
    eager = DearKDViTForImageClassification._from_config(tiny_config(), attn_implementation="eager")
    sdpa = DearKDViTForImageClassification._from_config(tiny_config(), attn_implementation="sdpa")
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    assert model.config._attn_implementation == "sdpa"  # transformers' default
    with torch.no_grad():
        out = model(images(), output_attentions=True)
        assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 18, 18)
        torch.testing.assert_close(out.logits, model(images()).logits, rtol=0, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path, attn_implementation="eager")
    assert loaded.config._attn_implementation == "eager"
    loaded.set_attn_implementation("sdpa")
    assert loaded.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError):
        DearKDViTForImageClassification._from_config(tiny_config(), attn_implementation="flex_attention")


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_meta_device_build_materialises_like_a_normal_build(attn_implementation):
    config = tiny_config(drop_path_rate=0.1)
    torch.manual_seed(0)
    reference = DearKDViTForImageClassification._from_config(config, attn_implementation=attn_implementation).eval()
    with torch.device("meta"):
        model = DearKDViTForImageClassification._from_config(config, attn_implementation=attn_implementation)
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    model.to_empty(device="cpu")
    model.init_weights()  # fills parameters and the non-persistent buffers
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(model.get_buffer(name), buffer, rtol=0, atol=0, msg=name)
    model.load_state_dict(reference.state_dict())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images()).logits, reference(images()).logits, rtol=0, atol=0)
    rates = [layer.drop_path.drop_prob for layer in model.dearkd_vit.layers]
    assert rates == pytest.approx([0.0, 0.1])


def test_every_tensor_is_a_parameter_or_a_buffer():
    model = tiny_model()
    registered = {id(t) for t in [*model.parameters(), *model.buffers()]}
    for name, module in model.named_modules():
        for attribute, value in vars(module).items():
            if isinstance(value, torch.Tensor) and attribute not in ("_parameters", "_buffers"):
                assert id(value) in registered, f"{name}.{attribute} is a plain tensor attribute"


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_interpolate_pos_encoding_runs_other_resolutions_with_that_grids_positions(attn_implementation):
    model = DearKDViTForImageClassification._from_config(tiny_config(), attn_implementation=attn_implementation)
    model.eval()
    with_random_positional_weights(model)
    with torch.no_grad():
        same = model(images(), interpolate_pos_encoding=True).logits
        torch.testing.assert_close(same, model(images()).logits, rtol=0, atol=0)
        bigger = torch.randn(2, 3, 6 * PATCH, 5 * PATCH, generator=torch.Generator().manual_seed(5))
        out = model(bigger, interpolate_pos_encoding=True, output_attentions=True)
        assert out.logits.shape == (2, 5) and out.attentions[0].shape == (2, 4, 32, 32)
        # the MHCA bias of a 6 x 5 grid: delta between (x, y) = (0, 0) and (1, 2) is (1, 2), r = (5, 1, 2)
        attention = model.dearkd_vit.layers[0].attention
        bias = attention.positional_bias(NUM_PREFIX + 30, (6, 5))
        torch.testing.assert_close(bias[:, NUM_PREFIX, NUM_PREFIX + 2 * 5 + 1], attention.positional_weight @ r521())
        fast = model(bigger, interpolate_pos_encoding=True).logits
        torch.testing.assert_close(fast, out.logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(bigger)


def r521() -> torch.Tensor:
    return torch.tensor([5.0, 1.0, 2.0])


def test_interpolated_sdpa_matches_eager_on_another_grid():
    model = tiny_model(attention_probs_dropout_prob=0.0, drop_path_rate=0.0).train()
    with_random_positional_weights(model)
    eager = _eager_twin(model).train()
    bigger = torch.randn(2, 3, 5 * PATCH, 7 * PATCH, generator=torch.Generator().manual_seed(6))
    out, grads = _step(model, bigger, interpolate_pos_encoding=True)
    expected, expected_grads = _step(eager, bigger, interpolate_pos_encoding=True)
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_fullgraph_trains_on_cpu(backend):
    """torch.compile(fullgraph=True) raises on any graph break; aot_eager traces forward and backward without
    generating code, inductor (the default backend, slow: it compiles C++) also runs the generated kernels."""
    torch._dynamo.reset()
    model = tiny_model(attention_probs_dropout_prob=0.1).train()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = compiled(images(), labels=torch.tensor([0, 3])).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    assert model.dearkd_vit.layers[0].attention.positional_weight.grad.abs().sum() > 0


def test_half_precision_sdpa_keeps_the_bias_form_and_matches_eager():
    """In bf16 the channel form would round its large cancelling terms; MHCA layers pass the bias as a mask."""
    model = tiny_model(attention_probs_dropout_prob=0.0, drop_path_rate=0.0, mhca_locality_strength=3.0).eval()
    with_random_positional_weights(model)
    model = model.to(torch.bfloat16)
    eager = _eager_twin(model).to(torch.bfloat16).eval()
    attention = model.dearkd_vit.layers[0].attention
    attention.with_position_channels = None  # must not be called in bf16
    with torch.no_grad():
        torch.testing.assert_close(model(images()).logits, eager(images()).logits, rtol=0, atol=2e-2)
