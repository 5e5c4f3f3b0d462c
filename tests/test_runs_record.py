"""runs/record.py: ``dearkd_run.json``, the fingerprint of the run an output folder holds, and the refusal of a re-run
made with other settings (the fields that differ, listed)."""

from __future__ import annotations

import json

import pytest

from dearkd_hf.runs.record import (
    RUN_FILE,
    as_json,
    check_run_record,
    read_run_record,
    run_differences,
    write_run_record,
)

FINGERPRINT = {
    "distillation": {"alpha": 0.5, "beta": 1.0, "pairs": ("2:layer1", "4:layer2")},
    "schedule": {"num_train_epochs": 2.0, "seed": 0},
    "teacher": {"source": "teacher", "weights_sha256": "ab" * 32},
}


def test_the_record_reads_back_as_written(tmp_path):
    out = tmp_path / "new" / "out"
    assert read_run_record(str(out)) is None
    write_run_record(str(out), FINGERPRINT)  # creates the folder
    assert read_run_record(str(out)) == as_json(FINGERPRINT)
    assert read_run_record(str(out))["distillation"]["pairs"] == ["2:layer1", "4:layer2"]  # tuples read back as lists
    text = (out / RUN_FILE).read_text()
    assert text.index('"distillation"') < text.index('"schedule"') < text.index('"teacher"')  # keys sorted
    assert [path.name for path in out.iterdir()] == [RUN_FILE]  # no temporary file left beside it


@pytest.mark.parametrize("text", ['{"distillation": {"alp', "[1, 2]", ""], ids=["cut", "not-a-dict", "empty"])
def test_a_broken_record_reads_as_none(tmp_path, text):
    (tmp_path / RUN_FILE).write_text(text)
    assert read_run_record(str(tmp_path)) is None


def test_as_json_is_what_reads_back_from_json():
    assert as_json({"a": (1, 2), "b": {"c": None}, "d": object}) == {"a": [1, 2], "b": {"c": None}, "d": str(object)}
    assert as_json({3: "int keys"}) == {"3": "int keys"}


def test_run_differences_lists_each_leaf_that_differs():
    current = json.loads(json.dumps(FINGERPRINT))
    assert run_differences(as_json(FINGERPRINT), current) == []
    current["distillation"]["beta"] = 0.0
    current["schedule"]["max_steps"] = 8
    del current["teacher"]["source"]
    current["teacher"]["weights_sha256"] = "cd" * 32
    assert run_differences(as_json(FINGERPRINT), current) == [
        "distillation.beta (1.0 there, 0.0 now)",
        "schedule.max_steps (absent there, 8 now)",
        'teacher.source ("teacher" there, absent now)',
        f'teacher.weights_sha256 ("{"ab" * 28}... there, "{"cd" * 28}... now)',  # long values shortened
    ]


def test_a_rerun_with_other_settings_is_refused_listing_the_fields(tmp_path):
    check_run_record(str(tmp_path), FINGERPRINT)  # no record: nothing to check
    write_run_record(str(tmp_path), FINGERPRINT)
    check_run_record(str(tmp_path), FINGERPRINT)  # the same run: resumed
    before = (tmp_path / RUN_FILE).read_text()

    changed = {**FINGERPRINT, "distillation": {**FINGERPRINT["distillation"], "alpha": 0.9, "beta": 0.25}}
    with pytest.raises(ValueError) as refused:
        check_run_record(str(tmp_path), changed, flag="--out", afresh="or --overwrite_output_dir")
    assert str(refused.value) == (
        f"--out {tmp_path} holds a run made with other settings (2 differ: distillation.alpha (0.5 there, 0.9 now); "
        f"distillation.beta (1.0 there, 0.25 now)). Re-run with that run's settings (see {RUN_FILE}) to resume it, "
        "or train into a new --out (or --overwrite_output_dir to start afresh there)."
    )
    with pytest.raises(ValueError, match=rf"or delete its checkpoint-\* folders and {RUN_FILE} to start afresh"):
        check_run_record(str(tmp_path), changed)
    assert (tmp_path / RUN_FILE).read_text() == before  # refused, not rewritten


def test_at_most_eight_differences_are_shown(tmp_path):
    write_run_record(str(tmp_path), {f"field{i}": i for i in range(10)})
    with pytest.raises(ValueError) as refused:
        check_run_record(str(tmp_path), {f"field{i}": -i for i in range(10)})
    message = str(refused.value)
    assert "(10 differ: field0 (0 there, 0 now)" not in message  # equal leaves are not listed
    assert "(9 differ: field1 (1 there, -1 now); " in message and "field8 (8 there, -8 now); ...)" in message
    assert "field9" not in message
