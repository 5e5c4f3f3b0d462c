"""Where a model comes from: a local folder or a Hub name. A name that looks like a path must be an existing folder,
and a Hub lookup that fails because the Hub cannot be reached says so, naming the flag; a truncated weights file is
named before anything is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from huggingface_hub import constants as hub_constants

from ..runs.files import safetensors_problem


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
    """A name that looks like a local path must be an existing folder (instead of being looked up on the Hub), and
    its ``.safetensors`` files whole (a truncated copy fails here, named, not deep inside loading)."""
    if name is None or not looks_like_local_path(name):
        return
    path = os.path.expanduser(name)
    if not os.path.isdir(path):
        problem = "is a file, not a folder" if os.path.exists(path) else "no such folder"
        raise FileNotFoundError(f"{flag} {name}: {problem} ({os.path.abspath(path)}).")
    for file in sorted(os.listdir(path)):
        if file.endswith(".safetensors") and (problem := safetensors_problem(os.path.join(path, file))) is not None:
            raise ValueError(f"{flag} {name}: its {file} {problem}; save or download it again.")


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


def check_hub_dataset_repository(repo_id: str, nothing_done: str) -> None:
    """--push_to_hub of a dataset: create (or find) the repository now, so that a missing login, a wrong id or no
    connection fails in one line before any work, not after. ``nothing_done``: what the message says was not done."""
    from huggingface_hub import create_repo

    try:
        create_repo(repo_id, repo_type="dataset", exist_ok=True)
    except Exception as error:  # huggingface_hub raises its own HTTP, auth and offline-mode errors
        raise OSError(
            f"--push_to_hub: the dataset repository {repo_id} cannot be created or reached ({type(error).__name__}: "
            f"{error}). Log in (`hf auth login`), check --hub_model_id, or drop --push_to_hub; {nothing_done}."
        ) from None
