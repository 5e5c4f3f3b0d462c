"""Mean attention distance per layer (METHOD.md section 4), and a callback that logs it while training.

The paper reads its inductive-bias story off this diagnostic: early MHCA layers should attend locally (small
distance), later layers globally. Logging it lets users watch the bias move, e.g. across the stage switch.
"""

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from .models.students import square_side
from .runs.seeded_batches import preserved_rng


def patch_pixel_distances(grid_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(N, N) Euclidean distances in pixels between the row-major patch tokens of a (rows, cols) grid."""
    rows, cols = grid_size
    grid_rows, grid_cols = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    positions = torch.stack([grid_cols.flatten(), grid_rows.flatten()], dim=-1).float() * patch_size
    return torch.cdist(positions, positions)


def mean_attention_distance(
    attentions: torch.Tensor, grid_size: tuple[int, int], patch_size: int, num_prefix_tokens: int
) -> torch.Tensor:
    """Mean over batch, heads and query patches of sum_j A[i, j] * |p_i - p_j| (pixels), patch keys only.

    `attentions` is one layer's (B, H, T, T) softmax output with the prefix tokens first. The probabilities are
    used as they are, restricted to patch keys and NOT renormalised: mass a query puts on prefix tokens counts as
    distance 0, so a layer that mostly reads the class token shows a small distance.
    """
    patches = attentions[..., num_prefix_tokens:, num_prefix_tokens:].float()
    expected = grid_size[0] * grid_size[1]
    if patches.shape[-1] != expected:
        raise ValueError(
            f"The attention map has {patches.shape[-1]} patch tokens after {num_prefix_tokens} prefix tokens, but "
            f"the grid {grid_size} has {expected}; pass the grid and prefix count the model was run with."
        )
    distances = patch_pixel_distances(grid_size, patch_size).to(patches.device)
    return (patches * distances).sum(dim=-1).mean()


def _patch_size(model: torch.nn.Module) -> int:
    patch_size = getattr(getattr(model, "config", None), "patch_size", None)
    if patch_size is None:
        raise ValueError("AttentionDistanceCallback needs a ViT-like model, whose `config.patch_size` is set.")
    side = square_side(patch_size)
    if side is None:
        raise ValueError(f"AttentionDistanceCallback needs square patches, got `patch_size` {patch_size}.")
    return int(side)


def attention_distances(model: torch.nn.Module, pixel_values: torch.Tensor) -> list[float]:
    """Per-layer mean attention distance (pixels) of `model` on `pixel_values`, in eval mode, without gradients."""
    patch_size = _patch_size(model)
    grid = (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            attentions = model(pixel_values=pixel_values, output_attentions=True).attentions
    finally:
        model.train(was_training)
    if not attentions or any(layer is None for layer in attentions):
        raise ValueError(
            "The model returned no attention maps with `output_attentions=True`; load it with "
            '`attn_implementation="eager"`.'
        )
    num_prefix = attentions[0].shape[-1] - grid[0] * grid[1]
    return [mean_attention_distance(layer, grid, patch_size, num_prefix).item() for layer in attentions]


class AttentionDistanceCallback(TrainerCallback):
    """Logs `attention_distance/layer_{k}` every `logging_steps`, `eval_attention_distance/layer_{k}` per evaluation.

    It holds the trainer (TRL style): `trainer.add_callback(AttentionDistanceCallback(trainer))`. The probe is a
    fixed batch, the first `probe_batch_size` items of the eval dataset (else the train dataset) collated with the
    trainer's collator; it is built once and run on the unwrapped model, leaving training's RNG state untouched.
    """

    def __init__(self, trainer, probe_batch_size: int = 16) -> None:
        self.trainer = trainer
        self.probe_batch_size = probe_batch_size
        self._probe: torch.Tensor | None = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> TrainerControl:
        logging_steps = state.logging_steps or args.logging_steps
        is_logging_step = bool(logging_steps) and state.global_step % logging_steps == 0
        if args.logging_strategy == IntervalStrategy.STEPS and is_logging_step:
            self._log("attention_distance")
        return control

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> TrainerControl:
        self._log("eval_attention_distance")
        return control

    def _log(self, prefix: str) -> None:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        parameter = next(model.parameters())
        with preserved_rng(parameter.device):
            pixel_values = self._probe_pixels(getattr(model, "main_input_name", "pixel_values"))
            distances = attention_distances(model, pixel_values.to(parameter.device, parameter.dtype))
        self.trainer.log({f"{prefix}/layer_{k}": value for k, value in enumerate(distances)})

    def _probe_pixels(self, input_name: str) -> torch.Tensor:
        """The fixed probe batch's images, collated once (inside the caller's RNG guard, for random transforms)."""
        if self._probe is None:
            dataset = self.trainer.eval_dataset
            if dataset is None:
                dataset = self.trainer.train_dataset
            if isinstance(dataset, dict):  # several eval datasets: probe the first
                dataset = next(iter(dataset.values()))
            items = [dataset[i] for i in range(min(self.probe_batch_size, len(dataset)))]
            batch = self.trainer.data_collator(items)
            self._probe = batch[input_name]
        return self._probe
