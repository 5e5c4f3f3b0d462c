"""Configuration of the DearKD ViT student (a DeiT-style ViT whose attention can be MHCA, METHOD.md section 4).

This file must stay self-contained (it imports only transformers) so that a saved model folder loads with
`trust_remote_code=True` where dearkd_hf is not installed.
"""

from transformers import PretrainedConfig


class DearKDViTConfig(PretrainedConfig):
    r"""
    This is the configuration class to store the configuration of a [`DearKDViTForImageClassification`] (and of its
    backbone [`DearKDViTModel`]): a DeiT-style ViT with class and distillation tokens whose attention can be MHCA
    (METHOD.md section 4). The defaults give a DeiT-Ti-sized student (192 wide, 12 blocks, 3 heads) with MHCA in
    every block.

    Configuration objects inherit from [`PretrainedConfig`] and can be used to control the model outputs. Read the
    documentation from [`PretrainedConfig`] for more information. Prediction outputs other than `logits` are listed
    in `keys_to_ignore_at_inference`, so `Trainer.predict` returns just the averaged logits.

    Args:
        image_size (`int`, *optional*, defaults to 224):
            The side of the square input image, in pixels.
        patch_size (`int`, *optional*, defaults to 16):
            The side of a square patch, in pixels; must divide `image_size`.
        num_channels (`int`, *optional*, defaults to 3):
            The number of input channels (1 for grayscale).
        hidden_size (`int`, *optional*, defaults to 192):
            The token width (192 is DeiT-Ti).
        num_hidden_layers (`int`, *optional*, defaults to 12):
            The number of transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 3):
            The number of attention heads per block; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 768):
            The hidden width of each block's MLP.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            The MLP activation (a key of `transformers.activations.ACT2FN`).
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            The dropout on the embeddings and on each residual branch.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            The dropout on the attention probabilities (DeiT's recipe and transformers' ViT use 0). The paper asks for
            dropout inside MHCA so that attention does not collapse onto local information; 0.1 (the default before
            the speed work on the student) costs about 1.5x a training step on CPU, where no fused attention kernel
            applies dropout (METHOD.md section 4).
        drop_path_rate (`float`, *optional*, defaults to 0.1):
            Stochastic depth, increasing linearly from 0 in the first block to this rate in the last.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            The epsilon of the layer normalisations.
        initializer_range (`float`, *optional*, defaults to 0.02):
            The standard deviation of the truncated normal initialisation of the weights.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the query, key and value projections have a bias.
        mhca_layers (`list[int]`, *optional*):
            The 0-based indices of the blocks whose attention is MHCA; `None` means all blocks, `[]` none (plain ViT
            attention everywhere).
        mhca_locality_strength (`float`, *optional*, defaults to 1.0):
            The `a` of METHOD.md: the larger, the more each MHCA head starts as a sharp convolution-like kernel around
            its centre.
        use_distillation_token (`bool`, *optional*, defaults to `True`):
            Whether to add a DeiT distillation token and its head.

    Example:

    ```python
    >>> from dearkd_hf import DearKDViTConfig, DearKDViTForImageClassification

    >>> # A small DearKD ViT for 28 px grayscale images, MHCA in the first two blocks only
    >>> configuration = DearKDViTConfig(
    ...     image_size=28, patch_size=7, num_channels=1, hidden_size=64, num_hidden_layers=4,
    ...     num_attention_heads=4, intermediate_size=128, mhca_layers=[0, 1], num_labels=10,
    ... )
    >>> model = DearKDViTForImageClassification(configuration)
    >>> configuration.grid_size, configuration.num_prefix_tokens
    (4, 2)

    ```
    """

    model_type = "dearkd_vit"
    keys_to_ignore_at_inference = ["cls_logits", "distillation_logits", "hidden_states", "attentions"]

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 192
    num_hidden_layers: int = 12
    num_attention_heads: int = 3
    intermediate_size: int = 768
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.1
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    qkv_bias: bool = True
    mhca_layers: list[int] | None = None
    mhca_locality_strength: float = 1.0
    use_distillation_token: bool = True

    def __post_init__(self, **kwargs) -> None:
        if self.mhca_layers is not None:
            self.mhca_layers = list(self.mhca_layers)
        super().__post_init__(**kwargs)
        self.check_geometry()

    def check_geometry(self) -> None:
        """Raise a ValueError naming the argument if the model could not be built from this config (run once, when
        the config is created)."""
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int (square images and patches), got {value!r}.")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) is not divisible by `patch_size` ({self.patch_size}); "
                "pick a `patch_size` that divides `image_size`, or resize images to a multiple of it."
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) is not divisible by `num_attention_heads` "
                f"({self.num_attention_heads}); pick a head count that divides `hidden_size`."
            )
        for index in self.mhca_layers or []:
            if not isinstance(index, int) or not 0 <= index < self.num_hidden_layers:
                raise ValueError(
                    f"`mhca_layers` entry {index!r} is out of range: entries are 0-based block indices in "
                    f"[0, {self.num_hidden_layers - 1}] (`num_hidden_layers` = {self.num_hidden_layers}); "
                    "remove it, or pass `mhca_layers=None` for MHCA in every block."
                )

    @property
    def num_prefix_tokens(self) -> int:
        """Class token, plus the distillation token when there is one."""
        return 2 if self.use_distillation_token else 1

    @property
    def grid_size(self) -> int:
        """Side of the square patch grid."""
        return self.image_size // self.patch_size

    def is_mhca_layer(self, index: int) -> bool:
        return self.mhca_layers is None or index in self.mhca_layers
