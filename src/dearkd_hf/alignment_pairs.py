"""Alignment pairs: which student block is aligned with which teacher layer (METHOD.md section 2), parsed,
defaulted and checked. Plain values, so that the config can validate them without the aligners' lifecycle module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AlignmentPair:
    """One alignment: the output of student block ``student_block`` (1-based) against teacher layer
    ``teacher_layer``."""

    student_block: int
    teacher_layer: str

    def __str__(self) -> str:
        return f"{self.student_block}:{self.teacher_layer}"


def parse_alignment_pairs(pairs: Sequence[str]) -> list[AlignmentPair]:
    """Parse ``"STUDENT_BLOCK:TEACHER_LAYER"`` strings (a comma-separated single string is accepted too). A pair given
    twice is refused: it would count twice in the alignment loss."""
    if isinstance(pairs, str):
        pairs = [p for p in pairs.split(",") if p.strip()]
    parsed = []
    for pair in pairs:
        block, sep, layer = str(pair).strip().partition(":")
        if not sep or not block.strip().isdigit() or not layer.strip():
            raise ValueError(
                f"alignment_pairs entry {pair!r} is not 'STUDENT_BLOCK:TEACHER_LAYER' "
                "(1-based block index, teacher module name), e.g. '3:layer1'."
            )
        parsed.append(AlignmentPair(int(block), layer.strip()))
    refuse_repeated_pairs(parsed)
    return parsed


def default_alignment_pairs(num_student_blocks: int, teacher_stage_names: Sequence[str]) -> list[AlignmentPair]:
    """The student's blocks at 1/4 and 1/2 of its depth against the teacher's first two stages (METHOD.md)."""
    if len(teacher_stage_names) < 2:
        raise ValueError(
            "alignment_pairs: the teacher's stages are unknown (not a timm or transformers CNN), so no default "
            "pairs exist; pass them explicitly, e.g. alignment_pairs=['3:layer1', '6:layer2']."
        )
    blocks = (max(1, round(num_student_blocks / 4)), max(1, round(num_student_blocks / 2)))
    return [AlignmentPair(block, layer) for block, layer in zip(blocks, teacher_stage_names[:2])]


def resolve_alignment_pairs(
    alignment_pairs: Sequence[str] | None,
    num_student_blocks: int,
    teacher_stage_names: Sequence[str],
    teacher_layers: Sequence[str],
) -> list[AlignmentPair]:
    """The pairs a run aligns: ``alignment_pairs`` parsed when given, else :func:`default_alignment_pairs`; checked
    against the student's depth and the teacher's layers (:func:`validate_alignment_pairs`). The trainer and the
    teacher cache resolve them here, so both align the same pairs."""
    if alignment_pairs is not None:
        pairs = parse_alignment_pairs(alignment_pairs)
    else:
        pairs = default_alignment_pairs(num_student_blocks, teacher_stage_names)
    validate_alignment_pairs(pairs, num_student_blocks, teacher_layers)
    return pairs


def refuse_repeated_pairs(pairs: Sequence[AlignmentPair]) -> None:
    """A pair given twice would count twice in the alignment loss: refused, naming it."""
    for index, pair in enumerate(pairs):
        if pair in pairs[:index]:
            raise ValueError(
                f"alignment_pairs entry '{pair}' is given twice: it would count twice in the alignment loss. "
                "Give each pair once (weight the alignment with beta)."
            )


def validate_alignment_pairs(
    pairs: Sequence[AlignmentPair], num_student_blocks: int, teacher_layers: Sequence[str]
) -> None:
    """Fail before training on a pair given twice, a block out of range or a teacher layer that does not exist."""
    refuse_repeated_pairs(pairs)
    known = set(teacher_layers)
    for pair in pairs:
        if not 1 <= pair.student_block <= num_student_blocks:
            raise ValueError(
                f"alignment_pairs entry '{pair}': student block {pair.student_block} is out of range; the student "
                f"has blocks 1..{num_student_blocks} (1-based)."
            )
        if pair.teacher_layer not in known:
            raise ValueError(
                f"alignment_pairs entry '{pair}': the teacher has no layer {pair.teacher_layer!r}. "
                f"Valid layer names: {list(teacher_layers)}"
            )
