"""Checks that turn bad input into one clear error before any expensive work, and a non-finite loss into a stop.

Each names the argument at fault and what to do instead; the scripts and the library share them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from huggingface_hub import constants as hub_constants


def require_finite(config: Any, prefix: str = "") -> None:
    """Every float field of the dataclass ``config`` (and every float in a list field) must be finite.

    Range checks of the form ``x <= 0`` let NaN through (every comparison with NaN is false), which then trains to
    a NaN model; this check comes first. ``prefix`` is how a field is named in the error (``"--"`` for flags).
    """
    for config_field in dataclasses.fields(config):
        value = getattr(config, config_field.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"{prefix}{config_field.name}={value} is not a finite number; give a finite value.")


def check_finite_loss(loss: torch.Tensor, step: int, components: Mapping[str, torch.Tensor]) -> None:
    """Stop training at the first NaN/inf loss, naming the step and each loss component.

    Raised before the optimizer step, so the weights (and every checkpoint already written) are still finite and
    no NaN model is ever saved as the run's result.
    """
    if bool(torch.isfinite(loss.detach()).all()):
        return
    raise non_finite_error(
        f"Training step {step}",
        float(loss.detach().float().mean()),
        {name: float(value.detach().float().mean()) for name, value in components.items()},
        "Training stopped and no model was saved as the result. Lower the learning rate or the loss weights, or "
        "train in float32, then resume from the last checkpoint.",
    )


def non_finite_error(where: str, loss: float, components: Mapping[str, float], what_now: str) -> FloatingPointError:
    """The one message for a loss that is not a finite number: where, the loss and its terms, then ``what_now``
    (what was kept and the fix)."""
    parts = ", ".join(f"{name}={value:.6g}" for name, value in components.items())
    return FloatingPointError(f"{where}: the loss is {loss} ({parts}), not a finite number. {what_now}")


def check_writable_folder(path: str, flag: str = "--output_dir") -> None:
    """Fail now, not after training, when ``path`` cannot be created or written to.

    Writes (and removes) a probe file in the nearest existing folder rather than reading permission bits, which
    the root user bypasses: a read-only file system or a path under a regular file fails for every user.
    """
    target = os.path.abspath(os.path.expanduser(os.fspath(path)))
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{flag} {path}: {existing} is a file, not a folder; choose another {flag}.")
    try:
        handle, probe = tempfile.mkstemp(prefix=".dearkd-write-probe-", dir=existing)
    except OSError as error:
        raise PermissionError(
            f"{flag} {path}: cannot write to {existing} ({error.strerror}); choose a folder you can write to."
        ) from None
    os.close(handle)
    os.remove(probe)


def looks_like_local_path(name: str) -> bool:
    """A name meant as a local path: it exists, starts like a path (``/ ./ ../ ~``), has more separators than a
    Hub id ``owner/name``, or its first component exists here (``outputs/teacher`` next to ``outputs/``)."""
    return (
        os.path.exists(name)
        or name.startswith(("/", "./", "../", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or ("/" in name and os.path.exists(name.split("/", 1)[0]))
    )


def check_local_folder(name: str | None, flag: str) -> None:
    """A name that looks like a local path must be an existing folder (instead of being looked up on the Hub)."""
    if name is None or not looks_like_local_path(name):
        return
    path = os.path.expanduser(name)
    if not os.path.isdir(path):
        problem = "is a file, not a folder" if os.path.exists(path) else "no such folder"
        raise FileNotFoundError(f"{flag} {name}: {problem} ({os.path.abspath(path)}).")


@contextlib.contextmanager
def hub_lookup(name: str, flag: str) -> Iterator[None]:
    """Loading ``name`` from the Hub: when that fails because the Hub cannot be reached, say so with the flag."""
    try:
        yield
    except OSError as error:
        reason = None if os.path.isdir(os.path.expanduser(name)) else _unreachable_reason(error)
        if reason is None:  # a local folder's own error, or the Hub answered: not ours to reword
            raise
        raise OSError(
            f"{flag} {name}: there is no local folder of that name, and the Hugging Face Hub cannot be reached to "
            f"look it up as a model name ({reason}). Check the path, or connect and unset HF_HUB_OFFLINE."
        ) from error


def _unreachable_reason(error: BaseException) -> str | None:
    if hub_constants.HF_HUB_OFFLINE:
        return "offline mode: HF_HUB_OFFLINE is set"
    chain = []
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    names = {type(e).__name__ for e in chain}
    if names & {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectionError", "ConnectError", "Timeout"}:
        return "no connection"
    return None


def read_json_config(path: str) -> dict[str, Any]:
    """A model folder's ``config.json``, or an error naming the file when it is not a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or replace the file.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds {type(config).__name__}, not a JSON object of config values.")
    return config
