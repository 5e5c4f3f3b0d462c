"""What the example scripts share: the command line (:mod:`.cli`) and the student built from model flags
(:mod:`.model_arguments`)."""
