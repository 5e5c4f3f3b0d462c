"""model_card.py: the model card states every fact needed to reproduce a DearKD student."""

import yaml

from dearkd_hf.model_card import ModelCardInfo, build_model_card

FACTS = dict(
    model_name="dearkd-vit-tiny-fashion-mnist",
    teacher="outputs/resnet18-teacher",
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
        "outputs/resnet18-teacher",
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
        "| eval_accuracy | 0.8765 |",
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
    assert "/data/fashion_mnist_small" in card


def test_distilling_for_the_whole_run_is_stated():
    assert "stage 2 was not reached" in build_model_card(**{**FACTS, "distillation_stop_epoch": 10})
