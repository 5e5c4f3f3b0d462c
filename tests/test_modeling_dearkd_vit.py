"""The DearKD ViT student on tiny configs: MHCA, outputs, save/load (incl. remote code), from_vit, validation."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
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
    kwargs = dict(
        image_size=GRID * PATCH,
        patch_size=PATCH,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
    )
    return DearKDViTConfig(**{**kwargs, **overrides})


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
    from dearkd_hf.students import square_side

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
