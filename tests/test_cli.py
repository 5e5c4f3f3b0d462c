"""Shared CLI helpers: config overrides with lists, one-file arguments, resuming from the last checkpoint."""

import pytest
from transformers import HfArgumentParser

from dearkd_hf import DearKDConfig
from dearkd_hf.cli import parse_config_overrides, parse_script_args, resume_checkpoint


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


def test_resume_checkpoint_finds_the_last_one(tmp_path):
    config = DearKDConfig(output_dir=str(tmp_path), report_to="none")
    assert resume_checkpoint(config) is None
    for step in (4, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resume_checkpoint(config).endswith("checkpoint-12")
    config.resume_from_checkpoint = "elsewhere"
    assert resume_checkpoint(config) == "elsewhere"
