"""The private ``transformers.Trainer`` methods DearKDTrainer relies on: each still exists with the parameters it
is overridden or called with. A transformers upgrade that renames or reshapes one fails here, not in a user's run."""

import inspect

import pytest
from transformers import Trainer

from dearkd_hf.trainer import PRIVATE_TRAINER_METHODS, DearKDTrainer

# The parameters each method has in the transformers version the overrides were written against.
EXPECTED_PARAMETERS = {
    "_get_train_sampler": ["self", "train_dataset"],
    "_save": ["self", "output_dir", "state_dict"],
    "_save_checkpoint": ["self", "model", "trial"],
    "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
    "_get_output_dir": ["self", "trial"],
    "_push_from_checkpoint": ["self", "checkpoint_folder"],
}


def test_every_private_method_is_listed_with_its_parameters():
    assert PRIVATE_TRAINER_METHODS.keys() == EXPECTED_PARAMETERS.keys()


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_transformers_still_has_the_private_method_as_used(name):
    method = getattr(Trainer, name, None)
    assert callable(method), f"transformers.Trainer no longer has {name}: {PRIVATE_TRAINER_METHODS[name]}"
    assert list(inspect.signature(method).parameters) == EXPECTED_PARAMETERS[name]


def test_no_other_private_trainer_method_is_overridden():
    """A new override of a private Trainer method must be listed (and justified) in PRIVATE_TRAINER_METHODS."""
    overridden = {
        name
        for cls in DearKDTrainer.__mro__
        if cls is not Trainer and not issubclass(Trainer, cls)
        for name in vars(cls)
        if name.startswith("_") and not name.startswith("__") and callable(getattr(Trainer, name, None))
    }
    assert overridden <= PRIVATE_TRAINER_METHODS.keys()
