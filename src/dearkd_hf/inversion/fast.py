"""FastInversionGenerator: data-free synthesis amortised in a small generator network (METHOD.md section 5).

After Fast-Datafree (Fang et al., AAAI 2022): instead of optimising every batch's pixels from noise for thousands
of steps, a conditional generator ``G(z, y)`` turns latent codes into images. Its initialisation is meta-learned
once (Reptile over ``fast_warmup`` synthesis tasks), then each batch starts from that initialisation and adapts the
generator and its own latent codes for only ``fast_steps`` steps on the same loss as DeepInversion (CE, BatchNorm
statistics, image priors, optional competition term, BPID). Fast-Datafree's memory bank of past batches, which
replays them to its student, is the dataset itself here: every batch is kept as a shard.

Batch ``k`` still depends only on ``(seed, k)`` and the meta-learned initialisation, which depends only on the seed
and the configuration; :meth:`FastInversionGenerator.prepare` saves it next to the shards, so resuming, extending
and splitting batches over processes give the same images as one uninterrupted run.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

import safetensors.torch
import torch
from torch import nn

from ..runs.files import atomic_path
from .deepinversion import DeepInversionGenerator, InversionBatch, StepCallback, derived_seed

INIT_FILE = "fast_generator_init.safetensors"
_WARMUP_STREAM = 1  # seeds of warm-up tasks: SeedSequence((seed, task, 1)), never equal to a batch's (seed, k)
_WEIGHTS_STREAM = 2


class ImageGenerator(nn.Module):
    """``G(z, y)``: latent code times a label embedding, projected to a ``ceil(side / 4)``-pixel map, then two
    upsample-convolution blocks and a sigmoid; pixels in [0, 1], cropped to ``side``.
    """

    def __init__(self, num_labels: int, num_channels: int, side: int, width: int, latent_dim: int) -> None:
        super().__init__()
        self.side, self.base, self.width = side, math.ceil(side / 4), width
        self.embed = nn.Embedding(num_labels, latent_dim)
        self.project = nn.Linear(latent_dim, 2 * width * self.base**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, num_channels, 3, padding=1),
        )

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.project(latents * self.embed(labels)).view(len(labels), 2 * self.width, self.base, self.base)
        return torch.sigmoid(self.body(hidden)[..., : self.side, : self.side])


class FastInversionGenerator(DeepInversionGenerator):
    """The ``fast`` method, with :class:`DeepInversionGenerator`'s interface, labels, seeds and loss.

    ``config.method`` must be ``"fast"``. The meta-learned initialisation is computed on first use (or loaded by
    :meth:`prepare` from a run's shard folder); ``batches``, ``generate_batch`` and ``write_dataset`` work as for
    DeepInversion.
    """

    method = "fast"
    # Set per instance by :meth:`prepare`; the constructor is DeepInversionGenerator's, unchanged.
    initialisation: ImageGenerator | None = None

    def _new_network(self) -> ImageGenerator:
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(c.seed, 0, _WEIGHTS_STREAM))
            network = ImageGenerator(
                self.teacher.num_labels, self.num_channels, c.resolution, c.fast_width, c.fast_latent_dim
            )
        return network.to(self.device)

    @property
    def steps_per_batch(self) -> int:
        return self.config.fast_steps

    def preparation_steps(self, folder: str | None = None) -> int:
        """The meta-learning steps :meth:`prepare` will take: none once the initialisation exists (here or saved)."""
        ready = self.initialisation is not None or _saved_initialisation(folder) is not None
        return 0 if ready else self.config.fast_warmup * self.config.fast_steps

    def prepare(self, folder: str | None = None, callback: StepCallback | None = None) -> None:
        """Load the meta-learned initialisation from ``folder`` or, if it is not there, learn it (``callback(step,
        loss)`` after each of its steps) and save it there as safetensors, atomically, so that a killed run leaves
        either the whole file or none."""
        if self.initialisation is not None:
            return
        saved = _saved_initialisation(folder)
        if saved is not None:
            network = self._new_network()
            network.load_state_dict(safetensors.torch.load_file(saved, device=str(self.device)))
            self.initialisation = network
            return
        self.initialisation = self.meta_learn(callback)
        if folder is not None:
            state = {
                name: tensor.detach().cpu().contiguous() for name, tensor in self.initialisation.state_dict().items()
            }
            with atomic_path(os.path.join(folder, INIT_FILE)) as tmp:
                safetensors.torch.save_file(state, tmp)

    def meta_learn(self, callback: StepCallback | None = None) -> ImageGenerator:
        """Reptile: for each of ``fast_warmup`` tasks (a batch of the usual labels, its own seed), adapt a copy of
        the initialisation for ``fast_steps`` steps, then move the initialisation ``fast_meta_lr`` of the way to it.
        The competition term is left out: the initialisation is shared by every round of a dataset, whatever its
        student (METHOD.md section 5), so it depends only on the seed and the configuration."""
        c = self.config
        network = self._new_network()
        for task in range(c.fast_warmup):
            adapted, *_ = self._adapt(
                network,
                self.batch_labels(task),
                derived_seed(c.seed, task, _WARMUP_STREAM),
                callback,
                with_student=False,
            )
            with torch.no_grad():
                for initial, tuned in zip(network.state_dict().values(), adapted.state_dict().values()):
                    if initial.is_floating_point():
                        initial.add_(c.fast_meta_lr * (tuned - initial))
                    else:
                        initial.copy_(tuned)
        return network

    def generate_batch(
        self, labels: Sequence[int] | torch.Tensor, seed: int | None = None, callback: StepCallback | None = None
    ) -> InversionBatch:
        """Adapt the initialisation and fresh latent codes to ``labels`` for ``fast_steps`` steps; the images are the
        adapted generator's output. ``callback(step, total_loss)`` is called after each step."""
        self.prepare()
        _, pixels, terms = self._adapt(
            self.initialisation, labels, self.config.seed if seed is None else seed, callback
        )
        return self._to_batch(pixels, self._labels(labels), terms)

    def _labels(self, labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        self._check_labels(labels)
        return labels

    def _adapt(
        self,
        initialisation: ImageGenerator,
        labels: Sequence[int] | torch.Tensor,
        seed: int,
        callback: StepCallback | None,
        with_student: bool = True,
    ) -> tuple[ImageGenerator, torch.Tensor, dict[str, float]]:
        """A copy of ``initialisation`` and latent codes of ``seed``, optimised ``fast_steps`` steps for ``labels``
        (with the competition term if there is a student and ``with_student``): the adapted network, its images
        (teacher-normalised, detached) and the last step's loss terms."""
        c = self.config
        labels = self._labels(labels)
        rng = torch.Generator().manual_seed(seed)
        latents = torch.randn((len(labels), c.fast_latent_dim), generator=rng).to(self.device).requires_grad_(True)
        network = copy.deepcopy(initialisation).train()
        optimizer = torch.optim.Adam(
            [{"params": network.parameters(), "lr": c.fast_lr}, {"params": [latents], "lr": c.fast_latent_lr}],
            betas=(0.5, 0.999),
        )
        mean, std = self._statistics()
        with self.bn_statistics:
            for step in range(c.fast_steps):
                pixels = (network(latents, labels) - mean) / std
                terms = self._loss_terms(self._augment(pixels, 1, rng), labels, with_student)
                optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                optimizer.step()
                if callback is not None:
                    callback(step, terms["total"].item())
        with torch.no_grad():
            pixels = (network(latents, labels) - mean) / std
        return network, pixels, {name: value.item() for name, value in terms.items()}


def _saved_initialisation(folder: str | None) -> str | None:
    """The path of the initialisation :meth:`FastInversionGenerator.prepare` saved in ``folder``, if it is there."""
    path = os.path.join(folder, INIT_FILE) if folder is not None else None
    return path if path is not None and os.path.isfile(path) else None
