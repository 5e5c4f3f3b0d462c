"""Shared CLI helpers: config overrides, one-file arguments, resuming from the last complete checkpoint (which
checkpoint is complete: test_runs_checkpoints.py)."""

import pytest
from helpers import make_config, write_checkpoint
from transformers import HfArgumentParser, ViTConfig

from dearkd_hf import DearKDConfig
from dearkd_hf.scripts.cli import (
    check_config_overrides,
    parse_config_overrides,
    parse_script_args,
    processes_asked,
    resume_checkpoint,
    run_main,
    warn_if_launched_alone,
)


def test_config_overrides_keep_commas_inside_lists():
    parsed = parse_config_overrides("hidden_sizes=[16,32],depths=[1,1],hidden_act=gelu,drop=0.1,flag=true")
    assert parsed == {"hidden_sizes": [16, 32], "depths": [1, 1], "hidden_act": "gelu", "drop": 0.1, "flag": True}
    assert parse_config_overrides(None) == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_config_overrides("hidden_size")


def test_yaml_file_is_parsed_like_flags(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text(f"output_dir: {tmp_path}\nalpha: 0.25\nalignment_pairs: ['2:layer1']\n")
    (config,) = parse_script_args(HfArgumentParser(DearKDConfig), [str(path)])
    assert config.alpha == 0.25 and config.alignment_pairs == ["2:layer1"]


def test_resume_checkpoint_finds_the_last_complete_one(tmp_path, caplog):
    config = make_config(tmp_path)
    assert resume_checkpoint(config) is None
    for step in (4, 12):
        write_checkpoint(tmp_path / f"checkpoint-{step}", step)
    with caplog.at_level("INFO"):
        assert resume_checkpoint(config).endswith("checkpoint-12")
    assert "Resuming from" in caplog.text and "checkpoint-12" in caplog.text
    (tmp_path / "checkpoint-16").mkdir()  # a kill just after creating the folder
    caplog.clear()
    assert resume_checkpoint(config).endswith("checkpoint-12")
    assert "Skipping" in caplog.text and "checkpoint-16: it is empty" in caplog.text

    config.resume_from_checkpoint = str(tmp_path / "checkpoint-4")
    assert resume_checkpoint(config) == str(tmp_path / "checkpoint-4")
    config.resume_from_checkpoint = str(tmp_path / "checkpoint-16")
    with pytest.raises(
        ValueError, match="--resume_from_checkpoint .*checkpoint-16: cannot resume from it, it is empty"
    ):
        resume_checkpoint(config)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 8}, None),
        ({"hiden_size": 8}, r"ViTConfig has no 'hiden_size' \(did you mean 'hidden_size'\?\)"),
    ],
)
def test_config_overrides_must_be_keys_of_the_config(overrides, message):
    if message is None:
        check_config_overrides(ViTConfig(), overrides)
    else:
        with pytest.raises(ValueError, match=message):
            check_config_overrides(ViTConfig(), overrides)


def test_run_main_prints_user_errors_in_one_line(capsys, monkeypatch):
    def bad_input():
        raise ValueError("tau=nan is not a finite number; give a finite value.")

    monkeypatch.delenv("DEARKD_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_main(bad_input)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: tau=nan is not a finite number")

    monkeypatch.setenv("DEARKD_TRACEBACK", "1")  # the traceback, on request
    with pytest.raises(ValueError, match="tau=nan"):
        run_main(bad_input)
    monkeypatch.delenv("DEARKD_TRACEBACK")
    with pytest.raises(KeyError):  # not a user error: the traceback always shows
        run_main(lambda: {}["missing"])


def test_short_help_puts_dearkd_first_and_help_all_lists_every_trainer_flag(capsys):
    """run.py --help: the script's and DearKD's flags, then the Trainer's common ones; --help-all: all of them."""
    from transformers import HfArgumentParser

    from dearkd_hf.config import DearKDConfig
    from dearkd_hf.data.loading import DataTrainingArguments
    from dearkd_hf.scripts.cli import parse_script_args

    parser = HfArgumentParser((DataTrainingArguments, DearKDConfig))
    with pytest.raises(SystemExit):
        parse_script_args(parser, ["--help"])
    short = capsys.readouterr().out
    assert "--adam_beta1" not in short and "--help-all" in short.replace("\n", "")
    assert short.index("--dataset_name") < short.index("--alpha") < short.index("--learning_rate")
    assert "Trainer (common)" in short and "DearKDConfig (the method's own)" in short
    with pytest.raises(SystemExit):
        parse_script_args(HfArgumentParser((DataTrainingArguments, DearKDConfig)), ["--help-all"])
    assert "--adam_beta1" in capsys.readouterr().out


def test_accelerate_asking_for_processes_it_does_not_start_is_said_in_one_warning(caplog):
    """accelerate launch --cpu --num_processes 2 starts one process (it fans out on CPU only through mpirun): the
    run says so, naming the launcher that does start them."""
    launcher = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "run.py"]
    assert processes_asked(launcher) == 2
    assert processes_asked(["accelerate", "launch", "--num_processes=4", "run.py"]) == 4
    assert processes_asked(["python", "run.py", "--num_processes", "2"]) is None  # not a launcher
    with caplog.at_level("WARNING"):
        message = warn_if_launched_alone(1, launcher)
    assert "asked for 2 processes but started this one alone" in message and "torchrun --nproc_per_node 2" in message
    assert message in caplog.text
    assert warn_if_launched_alone(2, launcher) is None  # the processes did form one group
    assert warn_if_launched_alone(1, ["accelerate", "launch", "--num_processes", "1", "run.py"]) is None
