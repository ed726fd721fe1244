"""The last layer at the first position only (models/first_position.py): the same logits and
gradients as the full layer, for every model it rewrites, with both attention implementations."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from apm_lightning.models.first_position import FirstPositionLayer, first_position_last_layer

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def classifier(model_type: str, attention: str, dropout: float = 0.0):
    config = AutoConfig.for_model(
        model_type,
        vocab_size=200,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=3,
        **({"embedding_size": 32} if model_type == "electra" else {}),
        **TINY,
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)


def batch(padded: bool = True) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 200, (4, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if padded:  # rows of different lengths; unpadded, SDPA's mask may be None
        attention_mask[1, 7:] = 0
        attention_mask[3, 4:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.tensor([0, 2, 1, 2])}


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra"])
def test_same_logits_and_gradients_as_the_full_layer(model_type, attention, padded):
    full = classifier(model_type, attention)
    rewritten = copy.deepcopy(full)
    assert first_position_last_layer(rewritten)
    assert isinstance(rewritten.base_model.encoder.layer[-1], FirstPositionLayer)
    assert not isinstance(rewritten.base_model.encoder.layer[0], FirstPositionLayer)
    assert list(rewritten.state_dict()) == list(full.state_dict())  # names unchanged: exports alike

    losses = []
    for net in (full, rewritten):
        output = net(**batch(padded))
        output.loss.backward()
        losses.append(output)
    torch.testing.assert_close(losses[1].logits, losses[0].logits, atol=1e-5, rtol=1e-4)
    assert losses[1].loss.item() == pytest.approx(losses[0].loss.item(), rel=1e-5)
    gradients = dict(full.named_parameters())
    checked = 0
    for name, param in rewritten.named_parameters():
        if gradients[name].grad is None:
            assert param.grad is None, name
            continue
        torch.testing.assert_close(param.grad, gradients[name].grad, atol=1e-6, rtol=1e-4, msg=name)
        checked += 1
    assert checked > 20


def test_trains_with_dropout_and_pickles():
    net = classifier("bert", "sdpa", dropout=0.1)
    assert first_position_last_layer(net)
    output = net(**batch())
    output.loss.backward()
    assert torch.isfinite(output.loss) and output.logits.shape == (4, 3)
    copy_of = pickle.loads(pickle.dumps(net))  # ddp_spawn pickles the module
    assert type(copy_of.bert.encoder.layer[-1]) is type(net.bert.encoder.layer[-1])
    assert first_position_last_layer(net)  # twice is harmless


def test_other_models_are_left_alone():
    config = AutoConfig.for_model("distilbert", vocab_size=200, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
    net = AutoModelForSequenceClassification.from_config(config)
    before = [type(m) for m in net.modules()]
    assert not first_position_last_layer(net)
    assert [type(m) for m in net.modules()] == before
    decoder = classifier("bert", "sdpa")
    decoder.config.is_decoder = True
    assert not first_position_last_layer(decoder)


def test_the_classifier_rewrites_unless_told_not_to():
    from apm_lightning.modules.classification import TransformerClassifier

    tiny = {"model_type": "bert", "vocab_size": 200, **TINY}
    default = TransformerClassifier(backbone=None, backbone_config=tiny, task="rte", tokenizer="minilm")
    assert isinstance(default.net.bert.encoder.layer[-1], FirstPositionLayer)
    full = TransformerClassifier(
        backbone=None, backbone_config=tiny, task="rte", tokenizer="minilm", cls_only_last_layer=False
    )
    assert not isinstance(full.net.bert.encoder.layer[-1], FirstPositionLayer)
