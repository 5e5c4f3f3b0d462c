"""dearkd_hf.models.grayscale: a grayscale model folded to take RGB, by hand on tiny models."""

import timm
import torch
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

from dearkd_hf.modeling import DearKDViTConfig, DearKDViTForImageClassification
from dearkd_hf.modeling.modeling_dearkd_vit import RGB_TO_GRAY
from dearkd_hf.models.grayscale import FOLDED_KEY, as_grayscale, is_foldable, saved_as_rgb


def tiny_vit(channels: int) -> ViTForImageClassification:
    config = ViTConfig(
        image_size=8, patch_size=4, num_channels=channels, hidden_size=8, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=16, num_labels=3,
    )  # fmt: skip
    return ViTForImageClassification(config).eval()


def test_folded_vit_on_rgb_is_the_grayscale_vit_on_luma_and_everything_is_restored_after():
    torch.manual_seed(0)
    model = tiny_vit(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rgb = torch.rand(2, 3, 8, 8)
    gray = (rgb * torch.tensor(RGB_TO_GRAY).view(1, 3, 1, 1)).sum(1, keepdim=True)
    with torch.no_grad():
        expected = model(pixel_values=gray).logits
        rng = torch.get_rng_state()
        with saved_as_rgb(model) as folded:
            assert folded and model.config.num_channels == 3 and getattr(model.config, FOLDED_KEY)
            weight = model.state_dict()["vit.embeddings.patch_embeddings.projection.weight"]
            assert weight.shape[1] == 3
            assert torch.allclose(model(pixel_values=rgb).logits, expected, atol=1e-6)
            replicated = gray.expand(-1, 3, -1, -1)  # a grayscale image served as RGB: the same output
            assert torch.allclose(model(pixel_values=replicated).logits, expected, atol=1e-6)
        assert torch.equal(torch.get_rng_state(), rng)  # folding draws nothing
    assert model.config.num_channels == 1 and not hasattr(model.config, FOLDED_KEY)
    assert model.vit.embeddings.patch_embeddings.num_channels == 1
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=gray).logits, expected)


def test_as_grayscale_undoes_the_fold_of_a_saved_model(tmp_path):
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=3)
    model = ResNetForImageClassification(config).eval()
    with saved_as_rgb(model):
        model.save_pretrained(tmp_path)
    reloaded = ResNetForImageClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_channels == 3
    as_grayscale(reloaded)
    assert reloaded.config.num_channels == 1 and not hasattr(reloaded.config, FOLDED_KEY)
    gray = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=gray).logits, model(pixel_values=gray).logits, atol=1e-5)


def test_timm_in_chans_follows_the_fold():
    model = timm.create_model("test_resnet", in_chans=1, num_classes=3).eval()
    with saved_as_rgb(model) as folded:
        assert folded and model.in_chans == 3 and model.conv1[0].in_channels == 3
    assert model.in_chans == 1 and model.conv1[0].in_channels == 1


def test_rgb_models_and_the_dearkd_vit_are_not_folded():
    config = DearKDViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, num_labels=3,
    )  # fmt: skip
    for model in (tiny_vit(3), DearKDViTForImageClassification(config)):
        assert not is_foldable(model)
        with saved_as_rgb(model) as folded:
            assert not folded and model.config.num_channels in (1, 3)
