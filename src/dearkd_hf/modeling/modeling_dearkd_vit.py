"""The DearKD ViT student: a DeiT-style ViT whose attention is MHCA (METHOD.md section 4) in chosen blocks.

MHCA (multi-head convolutional attention) adds to each head's attention logits a learnable relative positional term
`v_h . r(delta)` with `r(delta) = (|delta|^2, delta_x, delta_y)` and `delta = p_j - p_i` the grid offset between
patch tokens (Cordonnier et al., ICLR 2020). Initialised to `v_h = -a * (1, -2 c_hx, -2 c_hy)`, the term equals
`-a * |delta - c_h|^2 + const`, so head h starts as a Gaussian around `p_i + c_h`: a convolution-like kernel that
training may widen or drop. The term is 0 for any pair involving a prefix (class / distillation) token.

Two numerical guards:

- The bias is floored at `MHCA_BIAS_RANGE` (30) below its row's maximum. Unfloored, distant tokens' logits sit
  hundreds below the row's maximum (-338 at 224 px with `a` = 1), so their softmax probabilities, and the gradients
  through them, are float32 subnormals, on which x86 arithmetic slows down (the default student's training step
  was 2.15x transformers' DeiT-Ti on an Intel Xeon, 1.12x with flush-to-zero; 1.16x and 1.06x on an AMD EPYC).
  Floored, every probability is at least e^-30 times its row's largest before normalisation, a normal float; the
  floor moves at most T * e^-30 (< 1e-10 at T = 197) of a row's probability. For autograd the floor is a constant
  (the raw bias's gradient flows, weighted by those same < e^-30 probabilities where the floor is active), so the
  fused sdpa path can keep the positional term in its query / key channels and pass the floor alone as a mask that
  needs no gradient.
- The positional term is computed in float32 (float64 for a float64 model) whatever the weights' dtype, from
  integer geometry buffers that no dtype cast touches: `from_pretrained(..., dtype=torch.bfloat16)`, `.half()` and
  autocast keep MHCA's locality (relative positions up to 2 (G - 1)^2 = 338 are not exact in bf16).

This file must stay self-contained: it imports only torch, transformers and the config next to it, so that a saved
model folder loads with `trust_remote_code=True` where dearkd_hf is not installed.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_dearkd_vit import DearKDViTConfig

# ---------------------------------------------------------------------------------------------------------------------
# MHCA geometry


def _grid_shape(grid_size: int | tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of a grid given as a side or as (rows, cols)."""
    return (grid_size, grid_size) if isinstance(grid_size, int) else (int(grid_size[0]), int(grid_size[1]))


def grid_positions(grid_size: int | tuple[int, int]) -> torch.Tensor:
    """(N, 2) float positions (x, y) in patch units of the row-major patch tokens of a (rows, cols) or square grid."""
    num_rows, num_cols = _grid_shape(grid_size)
    rows, cols = torch.meshgrid(torch.arange(num_rows), torch.arange(num_cols), indexing="ij")
    return torch.stack([cols.flatten(), rows.flatten()], dim=-1).float()


def relative_positions(grid_size: int | tuple[int, int]) -> torch.Tensor:
    """(N, N, 3) tensor r[i, j] = (|delta|^2, delta_x, delta_y) with delta = p_j - p_i, in patch units."""
    positions = grid_positions(grid_size)
    delta = positions[None, :, :] - positions[:, None, :]
    return torch.cat([delta.pow(2).sum(-1, keepdim=True), delta], dim=-1)


MHCA_CHANNELS = 4  # extra query / key channels per head that carry MHCA's positional term on the sdpa path
MHCA_BIAS_RANGE = 30.0  # the positional bias is floored this far below its row's maximum (module docstring)
# The geometry buffers hold integers (every relative position and position feature is one), so no dtype cast of the
# model rounds them; they are cast to the positional term's float dtype where used.
GEOMETRY_DTYPE = torch.int32


def bias_floor_lift(bias: torch.Tensor) -> torch.Tensor:
    """What lifts each entry of a (..., T, T) logit bias to at least its row's maximum minus `MHCA_BIAS_RANGE`: 0
    where it already is. Detached: for autograd the floor is a constant (module docstring)."""
    bias = bias.detach()
    return (bias.amax(dim=-1, keepdim=True) - MHCA_BIAS_RANGE - bias).clamp(min=0)


def mhca_position_features(grid_size: int | tuple[int, int], num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The positional term `v_h . r(p_j - p_i)` as a product of query and key features, for the sdpa path.

    With positions p centred on the grid (shifted by the integer part of their mean, so every feature is an integer;
    the term depends on p_j - p_i only) and
    `|p_j - p_i|^2 = |p_j|^2 - 2 p_i . p_j + |p_i|^2`, the term for patch tokens i, j is
    `f_i . (B_j v_h) + c_i` where `c_i = v0 |p_i|^2 - v1 x_i - v2 y_i` depends on the row only, which softmax
    ignores. Returns:

    - query features f, (T, 4): `(1, x_i, y_i, |p_i|^2)` for a patch, zeros for a prefix token, whose row then gets
      no positional term at all;
    - key basis B, (T, 4, 3): for a patch, `B_j v = (v0 |p_j|^2 + v1 x_j + v2 y_j, -2 v0 x_j, -2 v0 y_j, 0)`; for a
      prefix token, `B_j v = (0, v1, v2, -v0)`, so that `f_i . B_j v = -c_i` cancels the row constant the patch
      columns dropped: a prefix column keeps its 0 relative to them, as in the eager formulation.

    So `f_i . (B_j v_h)` equals `v_h . r(p_j - p_i)` minus a constant per row, and 0 in prefix rows (tested).
    """
    positions = grid_positions(grid_size)
    positions = positions - positions.mean(dim=0).floor()  # centred: smaller products, less cancellation in fp32
    x, y = positions.unbind(-1)
    squared = x * x + y * y
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    query = torch.stack([ones, x, y, squared], dim=-1)
    # rows: output channel, columns: (v0, v1, v2)
    key = torch.stack(
        [
            torch.stack([squared, x, y], dim=-1),
            torch.stack([-2 * x, zeros, zeros], dim=-1),
            torch.stack([-2 * y, zeros, zeros], dim=-1),
            torch.stack([zeros, zeros, zeros], dim=-1),
        ],
        dim=1,
    )
    prefix_key = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    query = torch.cat([torch.zeros(num_prefix, MHCA_CHANNELS), query], dim=0)
    key = torch.cat([prefix_key.expand(num_prefix, -1, -1), key], dim=0)
    return query, key


def head_centres(num_heads: int) -> torch.Tensor:
    """(H, 2) centres (x, y) of the heads' initial kernels, in patch units.

    Convention: a centred integer grid of side s = ceil(sqrt(H)) with offsets `range(s) - s // 2` per axis (s = 2:
    {-1, 0}; s = 3: {-1, 0, 1}; s = 4: {-2, -1, 0, 1}), enumerated row-major (y outer, x inner); head h takes the
    h-th centre, so with H < s^2 the last centres are unused.
    """
    side = math.ceil(math.sqrt(num_heads))
    offsets = torch.arange(side) - side // 2
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    return torch.stack([dx.flatten(), dy.flatten()], dim=-1)[:num_heads].float()


def initial_positional_weights(num_heads: int, locality_strength: float) -> torch.Tensor:
    """(H, 3) initial v_h = -a * (1, -2 c_hx, -2 c_hy): head h attends to a Gaussian around p_i + c_h."""
    centres = head_centres(num_heads)
    ones = torch.ones(num_heads, 1)
    return -locality_strength * torch.cat([ones, -2.0 * centres], dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks


@dataclass
class DearKDViTOutput(ModelOutput):
    """Outputs of [`DearKDViTForImageClassification`].

    loss: cross-entropy of `logits` against `labels` (class indices, or (B, C) probabilities), when labels are given.
    logits: the prediction, mean of the class and distillation heads (class head alone without a distillation token).
    cls_logits / distillation_logits: each head's logits (the latter None without a distillation token).
    hidden_states: embeddings output then each block's output, (B, num_prefix + N, D), before the final norm.
    attentions: per block, the (B, heads, T, T) softmax probabilities (before attention dropout).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cls_logits: torch.Tensor | None = None
    distillation_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class DearKDViTDropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample, rescaling the kept ones."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = hidden_states.new_empty(shape).bernoulli_(keep_prob).div_(keep_prob)
        return hidden_states * mask  # one pass over the activations, the rescale done on the (B, 1, 1) mask

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


# ITU-R 601 luma, the weights of PIL's convert("L"): a grayscale model given RGB pixels (``pipeline()`` converts every
# image to RGB) reads them as the grayscale image its training saw. A one-value mean/std normalisation commutes with
# them, since they sum to 1.
RGB_TO_GRAY = (0.299, 0.587, 0.114)


class DearKDViTPatchEmbeddings(nn.Module):
    """Non-overlapping patches -> tokens, a strided Conv2d as in ViT. A grayscale model also takes RGB pixels."""

    def __init__(self, config: DearKDViTConfig) -> None:
        super().__init__()
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.num_channels == 1 and pixel_values.shape[1] == 3:
            weights = pixel_values.new_tensor(RGB_TO_GRAY).view(1, 3, 1, 1)
            pixel_values = (pixel_values * weights).sum(dim=1, keepdim=True)
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"`pixel_values` has {pixel_values.shape[1]} channels but the model expects {self.num_channels} "
                "(`num_channels`); convert the images (e.g. grayscale -> RGB) or build the model with that count."
            )
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class DearKDViTEmbeddings(nn.Module):
    """Patch tokens, prefixed by the class (and distillation) token, plus a learned position embedding."""

    def __init__(self, config: DearKDViTConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.num_prefix_tokens = config.num_prefix_tokens
        self.patch_embeddings = DearKDViTPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.distillation_token = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_distillation_token else None
        )
        num_tokens = config.num_prefix_tokens + config.grid_size**2
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_tokens, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The position embeddings for a `height` x `width` image: the patch table resized bicubically (as in
        transformers' ViT / DeiT), the prefix positions kept."""
        num_patches = embeddings.shape[1] - self.num_prefix_tokens
        num_positions = self.position_embeddings.shape[1] - self.num_prefix_tokens
        if not torch.jit.is_tracing() and num_patches == num_positions and height == width:
            return self.position_embeddings
        prefix_pos_embed = self.position_embeddings[:, : self.num_prefix_tokens]
        patch_pos_embed = self.position_embeddings[:, self.num_prefix_tokens :]
        dim = embeddings.shape[-1]
        side = int(num_positions**0.5)
        patch_pos_embed = patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch_pos_embed = F.interpolate(
            patch_pos_embed,
            size=(height // self.patch_size, width // self.patch_size),
            mode="bicubic",
            align_corners=False,
        )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((prefix_pos_embed, patch_pos_embed), dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if not interpolate_pos_encoding and (height != self.image_size or width != self.image_size):
            raise ValueError(
                f"Input image size ({height}x{width}) does not match the model's `image_size` ({self.image_size}); "
                "resize the images in the transform, or pass `interpolate_pos_encoding=True`."
            )
        if interpolate_pos_encoding and (height % self.patch_size or width % self.patch_size):
            raise ValueError(
                f"Input image size ({height}x{width}) is not a multiple of `patch_size` ({self.patch_size}); "
                "resize or crop the images to a multiple of it."
            )
        patches = self.patch_embeddings(pixel_values)
        prefix = [self.cls_token] + ([self.distillation_token] if self.distillation_token is not None else [])
        prefix = [token.expand(patches.shape[0], -1, -1) for token in prefix]
        embeddings = torch.cat([*prefix, patches], dim=1)
        if interpolate_pos_encoding:
            embeddings = embeddings + self.interpolate_pos_encoding(embeddings, height, width)
        else:
            embeddings = embeddings + self.position_embeddings
        return self.dropout(embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference formulation, materialising the probabilities (returned, before dropout): (B, H, T, d) in,
    (B, T, H, d) out. `attention_mask` is MHCA's (H, T, T) bias, added to the scaled logits."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = query @ key.transpose(-2, -1) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    context = F.dropout(probs, p=dropout, training=module.training) @ value
    return context.transpose(1, 2).contiguous(), probs


class DearKDViTAttention(nn.Module):
    """Multi-head self-attention; with `use_mhca`, MHCA: a learnable relative positional logit term per head.

    Two implementations, chosen by `config._attn_implementation` (transformers' `attn_implementation`):

    - "eager": the reference formulation. The (H, T, T) positional bias (floored, `attention_bias`) is added in
      float32 to the scaled logits and the probabilities are materialised; also used whenever `output_attentions`
      is requested.
    - "sdpa" (default): `F.scaled_dot_product_attention`, which may use a fused kernel (CPU: flash attention) as
      long as its mask needs no gradient. Where v_h gets a gradient (training in fp32 / fp64), the positional term
      travels as `MHCA_CHANNELS` extra query / key channels per head (see `mhca_position_features`) and the mask
      is the floor alone (`bias_floor_lift`); otherwise (inference, frozen v_h) the mask is the floored bias
      (`attention_bias`), which spares copying the channels. Either gives the eager outputs and gradients up to
      float rounding (tested to 1e-5 in fp32). In half precision (bf16 / fp16, loaded so or under autocast) MHCA
      layers always pass the floored bias, relative to its row maximum (so in [-30, 0], where bf16 keeps it to
      0.06), as the mask: the channel form cancels terms of up to ~2 |v0| |p|^2 and bf16 rounding would move
      attention probabilities by up to ~0.1.
    """

    def __init__(self, config: DearKDViTConfig, use_mhca: bool) -> None:
        super().__init__()
        self.config = config
        self.is_causal = False
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout_prob = config.attention_probs_dropout_prob
        self.use_mhca = use_mhca
        self.grid_shape = (config.grid_size, config.grid_size)
        self.num_prefix_tokens = config.num_prefix_tokens
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)
        if use_mhca:
            # v_h, one row per head; filled by `_init_weights` (-a * (1, -2 c_hx, -2 c_hy))
            self.positional_weight = nn.Parameter(torch.zeros(self.num_heads, 3))
            # Derived from the config's grid, not saved, recomputed by `_init_weights` on load: r(delta) for the
            # eager path, the query features and key basis of the sdpa path; integers (`GEOMETRY_DTYPE`)
            relative = relative_positions(config.grid_size).to(GEOMETRY_DTYPE)
            self.register_buffer("relative_positions", relative, persistent=False)
            query_features, key_basis = mhca_position_features(config.grid_size, config.num_prefix_tokens)
            self.register_buffer("mhca_query_features", query_features.to(GEOMETRY_DTYPE), persistent=False)
            self.register_buffer("mhca_key_basis", key_basis.to(GEOMETRY_DTYPE), persistent=False)

    @property
    def positional_dtype(self) -> torch.dtype:
        """The dtype of the positional term: float32, or float64 for a float64 model; never half precision."""
        return torch.promote_types(self.positional_weight.dtype, torch.float32)

    def positional_bias(self, num_tokens: int, grid_shape: tuple[int, int] | None = None) -> torch.Tensor:
        """(H, T, T) logit bias v_h . r(p_j - p_i), zero in the rows and columns of prefix tokens; unfloored, in
        `positional_dtype`."""
        if grid_shape is None or tuple(grid_shape) == self.grid_shape:
            relative = self.relative_positions
        else:  # another resolution (interpolate_pos_encoding): the relative positions of that grid
            relative = relative_positions(grid_shape).to(self.relative_positions.device)
        dtype = self.positional_dtype
        bias = torch.einsum("ijc,hc->hij", relative.to(dtype), self.positional_weight.to(dtype))
        num_prefix = num_tokens - bias.shape[-1]
        return F.pad(bias, (num_prefix, 0, num_prefix, 0))

    def attention_bias(self, num_tokens: int, grid_shape: tuple[int, int] | None = None) -> torch.Tensor:
        """(H, T, T) the bias attention adds to its logits: `positional_bias` relative to its row maximum (softmax
        ignores the shift), floored at -`MHCA_BIAS_RANGE` (`bias_floor_lift`); in `positional_dtype`."""
        bias = self.positional_bias(num_tokens, grid_shape)
        bias = bias - bias.detach().amax(dim=-1, keepdim=True)
        return bias + bias_floor_lift(bias)

    def position_features(self, grid_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, 4) query features and (T, H, 4) key features whose products give the positional term (sdpa path),
        the key side divided by the softmax scale, which sdpa applies to the whole product; in `positional_dtype`."""
        if grid_shape is None or tuple(grid_shape) == self.grid_shape:
            query_features, key_basis = self.mhca_query_features, self.mhca_key_basis
        else:
            device = self.mhca_query_features.device
            query_features, key_basis = mhca_position_features(grid_shape, self.num_prefix_tokens)
            query_features, key_basis = query_features.to(device), key_basis.to(device)
        dtype = self.positional_dtype
        weight = self.positional_weight.to(dtype)
        key_features = torch.einsum("tfc,hc->thf", key_basis.to(dtype), weight) / self.scaling
        return query_features.to(dtype), key_features

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_attentions: bool = False,
        grid_shape: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, num_tokens, _ = hidden_states.shape
        shape = (batch_size, num_tokens, self.num_heads, self.head_dim)
        query, key, value = (
            proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        dropout = self.dropout_prob if self.training else 0.0
        implementation = "eager" if output_attentions else self.config._attn_implementation
        if implementation == "eager":
            # float32 bias: the sum with half-precision logits is float32 too, as is the softmax
            bias = self.attention_bias(num_tokens, grid_shape) if self.use_mhca else None
            context, probs = eager_attention_forward(self, query, key, value, bias, dropout, self.scaling)
        else:
            mask = None
            needs_grad = self.use_mhca and torch.is_grad_enabled() and self.positional_weight.requires_grad
            if needs_grad and query.dtype in (torch.float32, torch.float64):
                # v_h trains: a mask needing a gradient would send sdpa to the unfused path, so the term rides in
                # the channels and the mask is the floor alone, (1, H, T, T) (a 3-D mask is unfused on CPU too)
                query, key, value = self.with_position_channels(query, key, value, grid_shape)
                mask = bias_floor_lift(self.positional_bias(num_tokens, grid_shape)).to(query.dtype)[None]
            elif self.use_mhca:
                # Inference (no gradient for v_h): the floored bias as the mask, no extra channels to copy. Half
                # precision, always: the channel form's large, cancelling terms (|p|^2, p_i . p_j) would lose up to
                # ~0.1 of attention probability to rounding once v_h is trained
                mask = self.attention_bias(num_tokens, grid_shape).to(query.dtype)[None]
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
            context, probs = attention_interface(self, query, key, value, mask, dropout=dropout, scaling=self.scaling)
            context = context[..., : self.head_dim]
        context = context.reshape(batch_size, num_tokens, -1)
        return self.o_proj(context), probs if output_attentions else None

    def with_position_channels(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        grid_shape: tuple[int, int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, H, T, d) query, key, value with `MHCA_CHANNELS` more channels: the positional term rides in the query
        and key ones (`mhca_position_features`), the value ones are zeros (fused kernels want equal widths) and their
        outputs are dropped. Attention on them gives MHCA's unfloored probabilities (with `bias_floor_lift` as the
        mask, the floored ones)."""
        batch_size = query.shape[0]
        query_features, key_features = self.position_features(grid_shape)
        query_features = query_features.to(query.dtype).expand(batch_size, self.num_heads, -1, -1)
        key_features = key_features.transpose(0, 1).to(key.dtype).expand(batch_size, -1, -1, -1)
        zeros = value.new_zeros(1, 1, 1, MHCA_CHANNELS).expand(*value.shape[:-1], -1)
        query = torch.cat([query, query_features], dim=-1)
        key = torch.cat([key, key_features], dim=-1)
        return query, key, torch.cat([value, zeros], dim=-1)  # one pass, where F.pad fills then copies


class DearKDViTMLP(nn.Module):
    def __init__(self, config: DearKDViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class DearKDViTLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + drop_path(attn(LN(x))), then x + drop_path(mlp(LN(x)))."""

    def __init__(self, config: DearKDViTConfig, use_mhca: bool, drop_path: float) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = DearKDViTAttention(config, use_mhca=use_mhca)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DearKDViTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = DearKDViTDropPath(drop_path)

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_attentions: bool = False,
        grid_shape: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, probs = self.attention(
            self.layernorm_before(hidden_states), output_attentions=output_attentions, grid_shape=grid_shape
        )
        hidden_states = hidden_states + self.drop_path(self.dropout(attended))
        mixed = self.mlp(self.layernorm_after(hidden_states))
        hidden_states = hidden_states + self.drop_path(self.dropout(mixed))
        return hidden_states, probs


# ---------------------------------------------------------------------------------------------------------------------
# Models


class DearKDViTPreTrainedModel(PreTrainedModel):
    config: DearKDViTConfig
    config_class = DearKDViTConfig
    base_model_prefix = "dearkd_vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["DearKDViTEmbeddings", "DearKDViTLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """ViT/DeiT init; the `init` helpers skip tensors already loaded by from_pretrained."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, DearKDViTEmbeddings):
            init.trunc_normal_(module.position_embeddings, std=std)
            init.trunc_normal_(module.cls_token, std=std)
            if module.distillation_token is not None:
                init.trunc_normal_(module.distillation_token, std=std)
        elif isinstance(module, DearKDViTAttention) and module.use_mhca:
            weights = initial_positional_weights(module.num_heads, self.config.mhca_locality_strength)
            init.copy_(module.positional_weight, weights)
            init.copy_(module.relative_positions, relative_positions(self.config.grid_size))
            query_features, key_basis = mhca_position_features(self.config.grid_size, self.config.num_prefix_tokens)
            init.copy_(module.mhca_query_features, query_features)
            init.copy_(module.mhca_key_basis, key_basis)


class DearKDViTModel(DearKDViTPreTrainedModel):
    """The backbone: embeddings, blocks (MHCA in `config.mhca_layers`), final LayerNorm."""

    def __init__(self, config: DearKDViTConfig) -> None:
        super().__init__(config)
        self.embeddings = DearKDViTEmbeddings(config)
        rates = drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.layers = nn.ModuleList(
            DearKDViTLayer(config, use_mhca=config.is_mhca_layer(index), drop_path=rates[index])
            for index in range(config.num_hidden_layers)
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> DearKDViTPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        """`last_hidden_state` is after the final norm; `hidden_states` are the block outputs before it."""
        output_hidden_states = _default(output_hidden_states, self.config.output_hidden_states)
        output_attentions = _default(output_attentions, self.config.output_attentions)
        dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        interpolate = bool(interpolate_pos_encoding)
        hidden_states = self.embeddings(pixel_values.to(dtype), interpolate_pos_encoding=interpolate)
        patch_size = self.config.patch_size
        grid_shape = (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)
        # kept only when asked: in inference, holding every block's output would keep them all alive
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = []
        for layer in self.layers:
            hidden_states, probs = layer(hidden_states, output_attentions=output_attentions, grid_shape=grid_shape)
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            all_attentions.append(probs)
        output = BaseModelOutput(
            last_hidden_state=self.layernorm(hidden_states),
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )
        return output if _default(return_dict, self.config.return_dict) else output.to_tuple()


class DearKDViTForImageClassification(DearKDViTPreTrainedModel):
    """DearKD ViT with a class head (on the class token) and a distillation head (on the distillation token)."""

    def __init__(self, config: DearKDViTConfig) -> None:
        super().__init__(config)
        self.dearkd_vit = DearKDViTModel(config)
        self.cls_classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.distillation_classifier = (
            nn.Linear(config.hidden_size, config.num_labels) if config.use_distillation_token else None
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> DearKDViTOutput | tuple:
        backbone = self.dearkd_vit(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )
        tokens = backbone.last_hidden_state
        cls_logits = self.cls_classifier(tokens[:, 0])
        distillation_logits = None
        logits = cls_logits
        if self.distillation_classifier is not None:
            distillation_logits = self.distillation_classifier(tokens[:, 1])
            logits = (cls_logits + distillation_logits) / 2
        output = DearKDViTOutput(
            loss=classification_loss(logits, labels) if labels is not None else None,
            logits=logits,
            cls_logits=cls_logits,
            distillation_logits=distillation_logits,
            hidden_states=backbone.hidden_states,
            attentions=backbone.attentions,
        )
        return output if _default(return_dict, self.config.return_dict) else output.to_tuple()

    @classmethod
    def from_vit(
        cls, model_or_name_or_path: PreTrainedModel | str, **config_overrides
    ) -> "DearKDViTForImageClassification":
        """A DearKD student initialised from a transformers ViT or DeiT (instance, Hub name or local folder).

        Copied: patch embedding, class token, position embeddings, blocks, final norm, and the classifier(s) when
        their shape matches. Fresh: MHCA positional weights, the distillation token (its position starts as a copy of
        the class position) and head where the source has none. Dropout / drop-path rates keep the DearKD defaults
        unless given in `config_overrides` (which may also set e.g. `num_labels`, `mhca_layers`).
        """
        source = _load_source(model_or_name_or_path)
        config = cls.config_class(**_student_config_kwargs(source.config, config_overrides))
        student = cls(config)
        _transfer_backbone(source.base_model, student.dearkd_vit)
        _transfer_heads(source, student)
        return student


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def _default(value: bool | None, fallback: bool | None) -> bool:
    return bool(fallback) if value is None else value


def drop_path_rates(rate: float, num_layers: int) -> list[float]:
    """Stochastic-depth rate per block, linear from 0 to `rate`; plain floats, so the model builds on meta."""
    return [rate * index / (num_layers - 1) for index in range(num_layers)] if num_layers > 1 else [0.0]


# A copy of dearkd_hf.losses.classification_loss: this file must load with trust_remote_code where dearkd_hf is not
# installed. tests/test_losses.py checks that the two agree; change both together.
def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class indices or, with mixup/cutmix, float soft targets ``(B, C)`` (never multi-label)."""
    if labels.is_floating_point() and labels.shape == logits.shape:
        return torch.sum(-labels * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), labels.long().view(-1))


_ARCHITECTURE_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "initializer_range",
    "qkv_bias",
)


def _load_source(model_or_name_or_path: PreTrainedModel | str) -> PreTrainedModel:
    """The source model; a name or folder loads as a classifier when it was saved as one, else as a backbone."""
    if not isinstance(model_or_name_or_path, str):
        return model_or_name_or_path
    architectures = AutoConfig.from_pretrained(model_or_name_or_path).architectures or []
    is_classifier = any("ImageClassification" in name for name in architectures)
    auto_class = AutoModelForImageClassification if is_classifier else AutoModel
    return auto_class.from_pretrained(model_or_name_or_path)


# A copy of dearkd_hf.models.students.square_side (this file must stay self-contained for trust_remote_code);
# tests check that the two agree.
def square_side(value: int | list | tuple) -> int | None:
    """The side of a square size given as ``n``, ``(n, n)`` or ``[n, n]``; None when the size is not square."""
    if isinstance(value, int):
        return value
    return int(value[0]) if len(value) > 0 and len(set(value)) == 1 else None


def _student_config_kwargs(source_config, overrides: dict) -> dict:
    """DearKD config fields: the source's architecture and labels, then the caller's overrides."""
    kwargs = {name: getattr(source_config, name) for name in _ARCHITECTURE_FIELDS if hasattr(source_config, name)}
    for name in ("image_size", "patch_size"):
        side = square_side(kwargs[name])
        if side is None:
            raise ValueError(f"from_vit needs square images and patches, but the source's `{name}` is {kwargs[name]}.")
        kwargs[name] = side
    if source_config.id2label is not None and not {"num_labels", "id2label"} & overrides.keys():
        kwargs["id2label"] = dict(source_config.id2label)
        kwargs["label2id"] = dict(source_config.label2id or {v: k for k, v in source_config.id2label.items()})
    return {**kwargs, **overrides}


def _position_embeddings(source_embeddings: nn.Module, use_distillation_token: bool) -> torch.Tensor:
    """Student layout [cls, (dist), patches] from a ViT [cls, patches] or DeiT [cls, dist, patches] table."""
    table = source_embeddings.position_embeddings.detach()
    has_distillation = getattr(source_embeddings, "distillation_token", None) is not None
    num_prefix = 2 if has_distillation else 1
    cls_position = table[:, :1]
    prefix = [cls_position]
    if use_distillation_token:
        prefix.append(table[:, 1:2] if has_distillation else cls_position.clone())
    return torch.cat([*prefix, table[:, num_prefix:]], dim=1)


def _copy_into(target: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if target.shape != value.shape:
        raise ValueError(
            f"from_vit cannot copy `{name}`: the source has shape {tuple(value.shape)}, the student "
            f"{tuple(target.shape)}; do not override architecture fields (image_size, patch_size, hidden_size, ...)."
        )
    with torch.no_grad():
        target.copy_(value)


def _transfer_backbone(source_base: nn.Module, student_base: DearKDViTModel) -> None:
    """Copy every student tensor whose name exists in the source backbone (ViT and DeiT use the same names)."""
    source_state = source_base.state_dict()
    use_distillation = student_base.embeddings.distillation_token is not None
    source_state["embeddings.position_embeddings"] = _position_embeddings(source_base.embeddings, use_distillation)
    fresh = []
    for name, tensor in student_base.state_dict(keep_vars=True).items():
        if name in source_state:
            _copy_into(tensor, source_state[name], name)
        else:
            fresh.append(name)
    allowed_fresh = {"embeddings.distillation_token"}
    unexpected = [n for n in fresh if n not in allowed_fresh and not n.endswith("attention.positional_weight")]
    if unexpected:
        raise ValueError(f"from_vit found no source weights for {unexpected}; the source must be a ViT or DeiT.")


def _transfer_heads(source: nn.Module, student: DearKDViTForImageClassification) -> None:
    """Copy the source classifier(s) into the heads they correspond to, when the shapes match."""
    pairs = [("classifier", "cls_classifier"), ("cls_classifier", "cls_classifier")]
    pairs.append(("distillation_classifier", "distillation_classifier"))
    for source_name, student_name in pairs:
        source_head = getattr(source, source_name, None)
        student_head = getattr(student, student_name, None)
        if isinstance(source_head, nn.Linear) and isinstance(student_head, nn.Linear):
            if source_head.weight.shape == student_head.weight.shape:
                _copy_into(student_head.weight, source_head.weight.detach(), student_name + ".weight")
                _copy_into(student_head.bias, source_head.bias.detach(), student_name + ".bias")
