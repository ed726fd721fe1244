"""The last encoder layer computed at the first position only, for sequence classifiers whose
head reads nothing else.

A BERT-style classifier pools the last layer's state at position 0 ([CLS], or RoBERTa's <s>), so
that layer's queries, attention output and feed-forward at every other position are work no
score needs. Only the keys and values must still see every position. Computing the rest for
position 0 leaves the logits and every gradient the same (to float rounding) and removes about
10/12 of one layer's matrix products: 14% of a 6-layer encoder's, forward and backward.

transformers has no switch for this, so the layer's forward is rewritten here, for the three
layer classes that tests/test_first_position.py checks against the full layer, by giving that
one layer object a subclass of its own class: the parameters, their names, ``state_dict`` and
``save_pretrained`` stay the original model's, and the module still pickles (``ddp_spawn``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertLayer
from transformers.models.electra.modeling_electra import ElectraForSequenceClassification, ElectraLayer
from transformers.models.roberta.modeling_roberta import RobertaForSequenceClassification, RobertaLayer

from apm_lightning.core.library_compat import attention_implementation


class FirstPositionLayer:
    """Mixed in before a BERT-style layer class: the layer returns position 0 only, (B, 1, H)."""

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        attention = self.attention.self
        batch = hidden_states.shape[0]
        first = hidden_states[:, :1]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, x.shape[1], -1, attention.attention_head_size).transpose(1, 2)

        query, key, value = (
            heads(attention.query(first)),
            heads(attention.key(hidden_states)),
            heads(attention.value(hidden_states)),
        )
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = attention_mask[:, :, :1]  # the first query's row (boolean or additive)
        context = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=attention.dropout.p if attention.training else 0.0,
            scale=attention.scaling,
        )
        context = context.transpose(1, 2).reshape(batch, 1, -1)
        return self.feed_forward_chunk(self.attention.output(context, first))


class FirstPositionBertLayer(FirstPositionLayer, BertLayer):
    pass


class FirstPositionRobertaLayer(FirstPositionLayer, RobertaLayer):
    pass


class FirstPositionElectraLayer(FirstPositionLayer, ElectraLayer):
    pass


# Classifier class -> (the attribute holding its encoder, its layer class, the rewrite); each
# of these heads reads position 0 only (BERT's pooler, RoBERTa's and ELECTRA's heads).
FIRST_POSITION_HEADS = {
    BertForSequenceClassification: ("bert", BertLayer, FirstPositionBertLayer),
    RobertaForSequenceClassification: ("roberta", RobertaLayer, FirstPositionRobertaLayer),
    ElectraForSequenceClassification: ("electra", ElectraLayer, FirstPositionElectraLayer),
}


def first_position_last_layer(net: Any) -> bool:
    """Make ``net``'s last layer compute position 0 only; False (and nothing changed) where
    the model is not one of ``FIRST_POSITION_HEADS`` with a plain encoder."""
    if type(net) not in FIRST_POSITION_HEADS:
        return False
    encoder, layer_class, rewrite = FIRST_POSITION_HEADS[type(net)]
    layer, config = getattr(net, encoder).encoder.layer[-1], net.config
    plain = (
        type(layer) in (layer_class, rewrite)
        and not config.is_decoder
        and not getattr(config, "add_cross_attention", False)
        and not layer.chunk_size_feed_forward
        # the masks these two build are ones scaled_dot_product_attention takes as they are
        and attention_implementation(config) in ("eager", "sdpa")
    )
    if plain:
        layer.__class__ = rewrite
    return plain
