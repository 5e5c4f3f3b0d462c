"""The rows of the data-efficiency benchmark: one table that the docstring, the runner and the report all read."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Literal

from dearkd_hf.config import DEFAULT_STOP_FRACTION


@dataclass(frozen=True)
class Method:
    """One row kind: what it trains and how, in words and as the runner's settings.

    Args:
        name: The row's name in the results, the table and the plot.
        description: One sentence for the docstring and ``--help``.
        kind: ``"teacher"`` (examples/train_teacher.py), ``"student"`` (examples/run.py on the real data) or
            ``"datafree"`` (examples/generate.py from the fraction's teacher, then examples/run.py on those images
            alone, evaluated on the real test set).
        beta: Weight of the alignment loss (0: no alignment).
        mhca: The DearKD ViT's MHCA in every block (False: plain attention, ``mhca_layers=[]``).
        stop: When distillation stops: ``"start"`` (labels alone from step 0), ``"default"`` (DearKD's default
            share of the epochs) or ``"never"`` (at the last epoch).
        bpid: The generator's BPID term (``datafree`` rows only).
        flags: More examples/run.py flags for a student row (e.g. another alignment-weight rule).
    """

    name: str
    description: str
    kind: Literal["teacher", "student", "datafree"] = "student"
    beta: float = 1.0
    mhca: bool = True
    stop: Literal["start", "default", "never"] = "default"
    bpid: bool = False
    flags: tuple[str, ...] = ()

    def stop_epoch(self, epochs: float) -> float:
        """The ``--distillation_stop_epoch`` of a row trained ``epochs`` epochs."""
        return {"start": 0.0, "default": DEFAULT_STOP_FRACTION * epochs, "never": epochs}[self.stop]


METHODS = (
    Method(
        "teacher",
        "examples/train_teacher.py: the CNN teacher (a small transformers ResNet), on the fraction",
        kind="teacher",
    ),
    Method(
        "scratch",
        "a plain-attention ViT (mhca_layers=[]) of the same size on labels alone from step 0 (examples/run.py with "
        "distillation_stop_epoch=0)",
        beta=0.0,
        mhca=False,
        stop="start",
    ),
    Method(
        "scratch_mhca",
        "the DearKD ViT (MHCA) on labels alone: separates MHCA's inductive bias from distillation",
        beta=0.0,
        stop="start",
    ),
    Method(
        "deit",
        "DeiT hard distillation via the distillation token: beta=0, no stop, mhca_layers=[]",
        beta=0.0,
        mhca=False,
        stop="never",
    ),
    Method(
        "dearkd",
        "DearKD (library defaults): balanced alignment (beta<=1) + MHCA in every block + stop at 80% of the epochs",
    ),
    Method(
        "dearkd_fixed_beta",
        "DearKD with a fixed alignment weight (beta_schedule=constant, the default before the balanced rule)",
        flags=("--beta_schedule=constant",),
    ),
    Method("dearkd_ratio1", "DearKD with the balanced weight at align_ratio=1.0", flags=("--align_ratio=1.0",)),
    Method("dearkd_no_mhca", "DearKD with mhca_layers=[]", mhca=False),
    Method("dearkd_no_align", "DearKD with beta=0", beta=0.0),
    Method("dearkd_no_stop", "DearKD with distillation_stop_epoch = num_train_epochs", stop="never"),
    Method(
        "datafree_di",
        "examples/generate.py (DeepInversion, bpid_weight=0) from that fraction's teacher, then DearKD (soft KD, "
        "--datafree_epochs) on the generated images only; evaluated on the real test set",
        kind="datafree",
    ),
    Method("datafree_bpid", "the same with BPID (bpid_weight=1)", kind="datafree", bpid=True),
)
METHOD_NAMES = tuple(method.name for method in METHODS)
BY_NAME = {method.name: method for method in METHODS}


def methods_text(indent: int = 4) -> str:
    """The methods as an aligned two-column list (name, description), for the docstring and ``--help``."""
    width = max(map(len, METHOD_NAMES)) + 2
    lines = []
    for method in METHODS:
        wrapped = textwrap.wrap(method.description, 116 - indent - width)
        lines.append(" " * indent + method.name.ljust(width) + wrapped[0])
        lines += [" " * (indent + width) + line for line in wrapped[1:]]
    return "\n".join(lines)
