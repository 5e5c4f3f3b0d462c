"""The Hub room: where a model or dataset comes from (a local folder or a Hub id, :mod:`.lookup`), the student's
model card (:mod:`.model_card`) and what an upload may contain (:mod:`.upload`)."""
