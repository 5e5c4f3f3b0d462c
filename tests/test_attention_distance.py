"""Mean attention distance on crafted maps, and the callback inside a tiny Trainer run."""

import math

import pytest
import torch
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from dearkd_hf.attention_distance import AttentionDistanceCallback, attention_distances, mean_attention_distance
from dearkd_hf.modeling import DearKDViTConfig, DearKDViTForImageClassification

PATCH = 8
GRID = 4


def right_neighbour_map(num_prefix: int) -> torch.Tensor:
    """Each patch query attends fully to its right neighbour; the last column, with none, to the class token."""
    num_tokens = num_prefix + GRID * GRID
    attentions = torch.zeros(1, 2, num_tokens, num_tokens)
    attentions[..., :num_prefix, 0] = 1.0
    for row in range(GRID):
        for col in range(GRID):
            query = num_prefix + row * GRID + col
            key = query + 1 if col < GRID - 1 else 0
            attentions[..., query, key] = 1.0
    return attentions


def test_right_neighbour_map_has_known_distance():
    # 12 of 16 queries move one patch (8 px); the 4 last-column queries put all mass on the class token, which
    # counts as 0 because probabilities are not renormalised over patch keys: 12 * 8 / 16 = 6.
    for num_prefix in (1, 2):
        distance = mean_attention_distance(right_neighbour_map(num_prefix), (GRID, GRID), PATCH, num_prefix)
        assert distance.item() == pytest.approx(6.0)


def test_diagonal_and_uniform_maps():
    attentions = torch.zeros(1, 1, 4, 4)  # 2x2 grid, no prefix: each query to the diagonally opposite patch
    attentions[0, 0, [0, 1, 2, 3], [3, 2, 1, 0]] = 1.0
    assert mean_attention_distance(attentions, (2, 2), PATCH, 0).item() == pytest.approx(PATCH * math.sqrt(2))
    uniform = torch.full((1, 1, 4, 4), 0.25)  # per query: 0 + 8 + 8 + 8*sqrt(2), times 1/4
    expected = (2 * PATCH + PATCH * math.sqrt(2)) / 4
    assert mean_attention_distance(uniform, (2, 2), PATCH, 0).item() == pytest.approx(expected)


def test_grid_mismatch_raises():
    with pytest.raises(ValueError, match="grid"):
        mean_attention_distance(torch.zeros(1, 1, 17, 17), (3, 3), PATCH, 1)


def test_works_on_transformers_vit():
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=GRID * PATCH, patch_size=PATCH, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, attn_implementation="eager",
    )  # fmt: skip
    distances = attention_distances(ViTForImageClassification(config), torch.randn(2, 3, 32, 32))
    assert len(distances) == 2 and all(0 < d < GRID * PATCH * math.sqrt(2) for d in distances)


class TinyImages(torch.utils.data.Dataset):
    def __init__(self, size: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(size, 3, GRID * PATCH, GRID * PATCH, generator=generator)
        self.labels = torch.arange(size) % 3

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        # a random augmentation, so building the probe batch would consume training's RNG if it were not guarded
        noisy = self.images[index] + 0.1 * torch.randn_like(self.images[index])
        return {"pixel_values": noisy, "labels": self.labels[index]}


def train(tmp_path, with_callback: bool) -> Trainer:
    torch.manual_seed(0)
    config = DearKDViTConfig(
        image_size=GRID * PATCH, patch_size=PATCH, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3, attention_probs_dropout_prob=0.3, hidden_dropout_prob=0.1,
    )  # fmt: skip
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, logging_steps=2, per_device_train_batch_size=4,
        report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(DearKDViTForImageClassification(config), args, train_dataset=TinyImages())
    if with_callback:
        trainer.add_callback(AttentionDistanceCallback(trainer, probe_batch_size=4))
    trainer.train()
    return trainer


def test_callback_logs_per_layer_distances_without_touching_training_rng(tmp_path):
    trainer = train(tmp_path / "with", with_callback=True)
    logged = [entry for entry in trainer.state.log_history if "attention_distance/layer_0" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert all(entry["attention_distance/layer_1"] > 0 for entry in logged)

    metrics = trainer.evaluate(TinyImages(4))
    assert "eval_loss" in metrics
    expected = {"eval_attention_distance/layer_0", "eval_attention_distance/layer_1"}
    assert expected <= trainer.state.log_history[-1].keys()

    reference = train(tmp_path / "without", with_callback=False)
    for (name, weight), reference_weight in zip(trainer.model.named_parameters(), reference.model.parameters()):
        torch.testing.assert_close(weight, reference_weight, rtol=0, atol=0, msg=name)
