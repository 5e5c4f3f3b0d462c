"""model_card.py: the model card states every fact needed to reproduce a DearKD student."""

import yaml
from huggingface_hub import ModelCard

from dearkd_hf.hub.model_card import ModelCardInfo, build_model_card, public_name

FACTS = dict(
    model_name="dearkd-vit-tiny-fashion-mnist",
    teacher="./outputs/resnet18-teacher",
    dataset="zalando-datasets/fashion_mnist",
    num_train_epochs=10,
    distillation_stop_epoch=8,
    alpha=0.5,
    beta=2.0,
    tau=3.0,
    distillation_type="soft",
    alignment_pairs=["2:layer1", "5:layer2"],
    train_fraction=0.1,
    metrics={"eval_accuracy": 0.8765, "eval_loss": 0.4, "epoch": 10.0},
    base_model="facebook/deit-tiny-patch16-224",
)


def metadata(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_card_states_the_training_facts():
    card = build_model_card(**FACTS)
    for fact in (
        "local folder `resnet18-teacher`",
        "DearKD",
        "https://arxiv.org/abs/2204.12997",
        "alpha = 0.5",
        "beta = 2",
        "tau = 3",
        "soft",
        "`2:layer1`",
        "`5:layer2`",
        "until epoch 8 of 10",
        "zalando-datasets/fashion_mnist",
        "train fraction 0.1",
        "| accuracy | 0.8765 |",
    ):
        assert fact in card, fact


def test_card_metadata():
    meta = metadata(build_model_card(ModelCardInfo(**FACTS)))
    assert meta["library_name"] == "transformers"
    assert {"image-classification", "dearkd", "knowledge-distillation", "vision-transformer"} <= set(meta["tags"])
    assert meta["datasets"] == ["zalando-datasets/fashion_mnist"]
    assert meta["metrics"] == ["accuracy"]
    assert meta["base_model"] == "facebook/deit-tiny-patch16-224"


def test_local_dataset_stays_out_of_metadata():
    card = build_model_card(**{**FACTS, "dataset": "/data/fashion_mnist_small", "base_model": None})
    assert "datasets" not in metadata(card)
    assert "base_model" not in metadata(card)
    assert "local folder `fashion_mnist_small`" in card and "/data/" not in card


def test_distilling_for_the_whole_run_is_stated():
    assert "stage 2 was not reached" in build_model_card(**{**FACTS, "distillation_stop_epoch": 10})


def test_card_is_hub_ready(tmp_path):
    """What the Hub indexes, read back with huggingface_hub: model-index results, license, Hub ids only."""
    card = build_model_card(**{**FACTS, "license": "apache-2.0", "base_model": "/home/me/deit-init"})
    (tmp_path / "README.md").write_text(card)
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.license == "apache-2.0" and data.library_name == "transformers"
    assert data.base_model is None  # a local path is named in the text only
    assert "local folder `deit-init`" in card and "/home/me" not in card
    assert [(r.metric_type, r.metric_value, r.dataset_type) for r in data.eval_results] == [
        ("accuracy", 0.8765, "zalando-datasets/fashion_mnist")
    ]
    assert data.model_name == FACTS["model_name"]


def test_card_describes_the_student_and_the_run_as_they_were():
    plain = build_model_card(**{**FACTS, "distillation_token": False, "trust_remote_code": False})
    assert "with a class token" in plain and "distillation token" not in plain
    assert "trust_remote_code" not in plain
    dearkd = build_model_card(**{**FACTS, "trust_remote_code": True, "repo_id": "me/student"})
    assert 'pipeline("image-classification", model="me/student", trust_remote_code=True)' in dearkd
    datafree = build_model_card(
        **{
            **FACTS,
            "dataset": "/tmp/generated",
            "synthetic_data": True,
            "eval_dataset": "zalando-datasets/fashion_mnist",
        }
    )
    assert "synthesised from the teacher" in datafree and "data-free" in metadata(datafree)["tags"]
    assert "Evaluated on `zalando-datasets/fashion_mnist`" in datafree and "/tmp/generated" not in datafree


def test_card_lists_hyperparameters_and_versions_but_no_runtime():
    card = build_model_card(
        **{**FACTS, "metrics": {**FACTS["metrics"], "eval_runtime": 3.2, "eval_samples_per_second": 99.0}},
        hyperparameters={"learning_rate": 0.001, "seed": 0},
    )
    assert "- learning_rate: 0.001" in card and "- seed: 0" in card
    assert "- Transformers " in card and "- PyTorch " in card
    assert "runtime" not in card and "samples_per_second" not in card


def test_a_timm_local_teacher_is_named_as_local():
    assert public_name("local-dir:/work/outputs/teacher") == "local folder `teacher`"
    assert public_name("hf-hub:timm/resnet18.a1_in1k") == "`timm/resnet18.a1_in1k`"
    assert public_name("resnet18") == "`resnet18`"
