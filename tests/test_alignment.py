"""Pair parsing, token/map reshapes, normalisation and the aligner hook."""

import pytest
import torch

from dearkd_hf.alignment import (
    Aligner,
    AlignmentHead,
    StudentAligners,
    normalize_channels,
    patch_tokens,
    teacher_target,
    tokens_to_map,
)
from dearkd_hf.alignment_pairs import (
    AlignmentPair,
    default_alignment_pairs,
    parse_alignment_pairs,
    validate_alignment_pairs,
)


def test_parse_pairs_and_comma_string():
    expected = [AlignmentPair(3, "layer1"), AlignmentPair(6, "layer2")]
    assert parse_alignment_pairs(["3:layer1", "6:layer2"]) == expected
    assert parse_alignment_pairs("3:layer1,6:layer2") == expected
    assert [str(p) for p in expected] == ["3:layer1", "6:layer2"]


@pytest.mark.parametrize("bad", ["layer1", "x:layer1", "3:", ":layer1"])
def test_parse_rejects_malformed_pairs(bad):
    with pytest.raises(ValueError, match="STUDENT_BLOCK:TEACHER_LAYER"):
        parse_alignment_pairs([bad])


def test_default_pairs_quarter_and_half_depth():
    assert default_alignment_pairs(12, ["layer1", "layer2", "layer3"]) == [
        AlignmentPair(3, "layer1"),
        AlignmentPair(6, "layer2"),
    ]
    assert default_alignment_pairs(2, ["s1", "s2"]) == [AlignmentPair(1, "s1"), AlignmentPair(1, "s2")]
    with pytest.raises(ValueError, match="pass them explicitly"):
        default_alignment_pairs(12, [])


def test_validate_pairs_names_valid_layers_and_range():
    with pytest.raises(ValueError, match=r"Valid layer names: \['layer1', 'layer2'\]"):
        validate_alignment_pairs([AlignmentPair(1, "layer9")], 4, ["layer1", "layer2"])
    with pytest.raises(ValueError, match="out of range.*1..4"):
        validate_alignment_pairs([AlignmentPair(5, "layer1")], 4, ["layer1"])


def test_tokens_to_map_drops_prefix_tokens_row_major():
    tokens = torch.arange(2 * 6 * 3, dtype=torch.float).reshape(2, 6, 3)  # 2 prefix + 2x2 patches, D=3
    feature_map = tokens_to_map(tokens, (2, 2))
    assert feature_map.shape == (2, 3, 2, 2)
    assert torch.equal(feature_map[1, :, 0, 1], tokens[1, 3])  # patch index 1 = row 0, column 1
    assert torch.equal(feature_map[0, :, 1, 0], tokens[0, 4])


def test_normalize_and_teacher_target_by_hand():
    feature_map = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[3.0, 5.0], [7.0, 9.0]]]])  # (1, 2, 2, 2)
    target = teacher_target(feature_map, (1, 1))  # pooled: channel means 4 and 6 -> normalised -1, 1
    assert target.shape == (1, 1, 2)
    assert torch.allclose(target.flatten(), torch.tensor([-1.0, 1.0]), atol=1e-3)
    same_grid = teacher_target(feature_map, (2, 2))  # no pooling; position (0, 1) is token 1: channels 3, 5
    assert same_grid.shape == (1, 4, 2)
    assert torch.allclose(same_grid[0, 1], torch.tensor([-1.0, 1.0]), atol=1e-3)
    assert torch.allclose(
        normalize_channels(torch.tensor([[2.0, 4.0, 6.0]])), torch.tensor([[-1.2247, 0.0, 1.2247]]), atol=1e-4
    )


def test_aligner_equals_a_1x1_convolution_on_the_feature_map():
    torch.manual_seed(0)
    tokens = torch.randn(2, 1 + 9, 4)
    aligner = Aligner(4, 6)
    conv = torch.nn.Conv2d(4, 6, kernel_size=1)
    conv.weight.data = aligner.proj.weight.data.view(6, 4, 1, 1).clone()
    conv.bias.data = aligner.proj.bias.data.clone()
    as_map = conv(tokens_to_map(tokens, (3, 3)))  # METHOD.md's formulation: (B, C, h, w)
    expected = torch.nn.functional.layer_norm(as_map.permute(0, 2, 3, 1), (6,)).reshape(2, 9, 6)
    assert torch.allclose(aligner(patch_tokens(tokens, (3, 3))), expected, atol=1e-5)


def test_attached_aligners_run_in_forward_only_while_running(student):
    head = AlignmentHead([AlignmentPair(1, "a"), AlignmentPair(2, "b")], 16, [5, 7], (4, 4))
    aligners = StudentAligners(head)
    aligners.attach(student)
    aligners.attach(student)  # idempotent: one hook
    assert student.dearkd_aligners is head and len(student._forward_hooks) == 1
    pixels = torch.randn(2, 1, 16, 16)
    assert "aligned_features" not in student(pixel_values=pixels, output_hidden_states=True)
    with aligners.running(True):
        out = student(pixel_values=pixels, output_hidden_states=True)
    assert "aligned_features" not in student(pixel_values=pixels, output_hidden_states=True)  # off after the block
    features = aligners.aligned_features(out)
    assert [f.shape for f in features] == [(2, 16, 5), (2, 16, 7)]
    hidden = out.hidden_states[1][:, 1:]  # block 1's patch tokens (one class token)
    assert torch.allclose(features[0], head.aligners[0](hidden))
    features[0].sum().backward()
    assert head.aligners[0].proj.weight.grad is not None
    assert [k for k in student.state_dict() if StudentAligners.is_key(k)]
    assert not [k for k in StudentAligners.strip(student.state_dict()) if "aligner" in k]
    aligners.detach()
    assert not hasattr(student, "dearkd_aligners") and not student._forward_hooks
    assert not [k for k in student.state_dict() if "aligner" in k]
    assert aligners.aligned_features(student(pixel_values=pixels, output_hidden_states=True)) == ()


def test_aligners_save_atomically_and_load_or_refuse(student, tmp_path):
    torch.manual_seed(0)
    saved = StudentAligners(AlignmentHead([AlignmentPair(1, "a")], 16, [5], (4, 4)))
    saved.save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligners.safetensors"]  # no temporary file left
    fresh = StudentAligners(AlignmentHead([AlignmentPair(1, "a")], 16, [5], (4, 4)))
    assert fresh.missing_from(str(tmp_path)) is None
    fresh.load(str(tmp_path))
    assert all(torch.equal(v, fresh.head.state_dict()[k]) for k, v in saved.head.state_dict().items())

    other = StudentAligners(AlignmentHead([AlignmentPair(1, "a"), AlignmentPair(2, "b")], 16, [5, 7], (4, 4)))
    with pytest.raises(ValueError, match="not this run's aligners"):
        other.load(str(tmp_path))
    with pytest.raises(ValueError, match="has no aligners.safetensors.*resume from another checkpoint"):
        fresh.load(str(tmp_path / "empty"))
    StudentAligners(AlignmentHead([], 16, [], (4, 4))).load(str(tmp_path / "empty"))  # no pairs: nothing to load
