"""The Hub room: where a model or dataset comes from (a local folder or a Hub id, :mod:`.lookup`), the student's
model card (:mod:`.model_card`) and what an upload may contain (:mod:`.upload`).
"""

from .lookup import check_hub_dataset_repository, check_local_folder, hub_lookup

__all__ = [
    "check_hub_dataset_repository",
    "check_local_folder",
    "hub_lookup",
]
