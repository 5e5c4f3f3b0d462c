"""The runs room: what makes a training run safe to kill and re-run. The output folder's lock (:mod:`.lock`) and run
record (:mod:`.record`), complete checkpoints and exact resume (:mod:`.checkpoints`, :mod:`.seeded_batches`),
finite losses and weights (:mod:`.finite_checks`), resumable dataset shards (:mod:`.shards`) and atomic files
(:mod:`.files`). Imports nothing from the rest of the package.
"""
