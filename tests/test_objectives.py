"""Pretraining objectives as registered classes: the losses are those of the code before the
registry (pinned), the registry lists what is registered, and the worked example of
docs/extending.md (shuffled-token detection) trains as a real ``apm pretrain`` process."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import GLUE, SQUAD
from run_options import QUIET

from apm_lightning.modules.objectives.keyed_random import row_keys
from apm_lightning.modules.pretraining import PretrainingModule

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "experiments" / "pretrain"
WIKI = REPO.parent / "shared" / "data" / "corpus" / "wikitext-2-raw" / "wiki.valid.raw"

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


# --------------------------------------------------------------------------- the registry
def test_the_registry_lists_every_objective_file():
    from apm_lightning.cli import main, objectives_declared
    from apm_lightning.modules.objectives import objective_names
    from apm_lightning.runners.compare import registered_objectives

    names = objective_names()
    assert names[:3] == ["mlm", "clm", "electra"] and "shuffled_tokens" in names
    assert registered_objectives() == names
    # apm --help reads the names from the files' source (no torch): the same set.
    assert objectives_declared() == sorted(names)
    assert main(["--help"]) == 0


def test_the_module_has_no_branch_on_an_objective_name():
    """Every objective-specific decision is the objective's: pretraining.py names none."""
    import ast

    from apm_lightning.modules import pretraining
    from apm_lightning.modules.objectives import objective_names

    tree = ast.parse(Path(pretraining.__file__).read_text(encoding="utf-8"))
    compared = {
        c.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)  # objective == "mlm", objective in ("mlm", "electra")
        for c in ast.walk(node)
        if isinstance(c, ast.Constant)
    }
    assert not compared & set(objective_names())


needs_corpus = pytest.mark.skipif(not WIKI.is_file(), reason="../shared/data/corpus is missing")


@needs_corpus
def test_unknown_objective_or_setting_is_one_line(tmp_path, capsys):
    from apm_lightning.cli import main

    args = ["pretrain", "-c", str(PRETRAIN / "shuffled_tokens_tiny.yaml"), "--data.files", str(WIKI)]
    args += ["--trainer.default_root_dir", str(tmp_path / "run"), *QUIET]
    assert main([*args, "--model.objective", "bert"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "apm: error: unknown objective 'bert': choose one of mlm, clm, electra, prefix_lm, shuffled_tokens, span_corruption"
    ]
    assert main([*args, "--model.objective_args", '{"shuffle_rat": 0.2}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "objective shuffled_tokens has no setting shuffle_rat" in err[0]
    assert "its settings: shuffle_rate" in err[0]
    assert not (tmp_path / "run").exists()  # nothing written for a refused command


def test_a_checkpoint_naming_the_body_encoder_still_loads():
    """Checkpoints written before the transformer body was renamed hold ``encoder.*`` keys."""
    torch.manual_seed(0)
    old = PretrainingModule("mlm", backbone_config=TINY, tokenizer="minilm")
    checkpoint = {"state_dict": {}}
    old.on_save_checkpoint(checkpoint)
    for key, value in old.state_dict().items():
        checkpoint["state_dict"][key.replace("body.", "encoder.", 1) if key.startswith("body.") else key] = (
            value
        )
    assert any(k.startswith("encoder.") for k in checkpoint["state_dict"])
    new = PretrainingModule("mlm", backbone_config=TINY, tokenizer="minilm")
    new.on_load_checkpoint(checkpoint)
    new.load_state_dict(checkpoint["state_dict"])  # strict: every key matches
    assert torch.equal(
        new.body.embeddings.word_embeddings.weight, old.net.bert.embeddings.word_embeddings.weight
    )


# --------------------------------------------------------------------------- the worked example
def test_shuffled_tokens_are_keyed_permutations_within_each_block():
    module = PretrainingModule("shuffled_tokens", backbone_config=TINY, tokenizer="minilm")
    ids = torch.randint(1000, 30000, (64, 32), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 101, 102
    keys = row_keys(3, 5, torch.arange(100, 164))
    shuffled, moved = module.objective.shuffle(ids, keys)
    assert torch.equal(shuffled[~moved], ids[~moved]) and not moved[:, [0, -1]].any()
    assert torch.equal(shuffled.sort(dim=1).values, ids.sort(dim=1).values)  # a permutation per row
    assert 0.08 < moved.float().mean().item() < 0.18  # 15% chosen, less the fixed points
    # A block is shuffled alike in any batch (any rank); another step shuffles it otherwise.
    again, _ = module.objective.shuffle(ids[10:12], keys[10:12])
    assert torch.equal(again, shuffled[10:12])
    other, _ = module.objective.shuffle(ids, row_keys(3, 6, torch.arange(100, 164)))
    assert not torch.equal(other, shuffled)


def doc_section() -> str:
    text = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    start = text.index("## A new pretraining objective")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_the_doc_shows_the_shipped_files():
    """docs/extending.md shows the two files of the worked example verbatim."""
    blocks = re.findall(r"^`([^`\n]+)`:\n\n```\w*\n(.*?)^```$", doc_section(), re.MULTILINE | re.DOTALL)
    shown = dict(blocks)
    assert set(shown) == {
        "apm_lightning/modules/objectives/shuffled_tokens.py",
        "apm_lightning/configs/pretrain/shuffled_tokens_tiny.yaml",
    }
    for path, text in shown.items():
        assert text == (REPO / path).read_text(encoding="utf-8"), f"docs/extending.md shows an old {path}"


@needs_corpus
def test_the_worked_example_trains_as_a_real_apm_process(tmp_path):
    """The doc's command, shortened to 10 tiny steps, in its own process: the loss is finite and
    falls, and the run exports a model."""
    command = re.search(r"```bash\n(apm pretrain .*?)\n```", doc_section(), re.DOTALL).group(1)
    args = shlex.split(command)[1:]
    assert args[:3] == ["pretrain", "-c", "experiments/pretrain/shuffled_tokens_tiny.yaml"]
    args += ["--data.files", str(WIKI), "--data.max_documents=200", "--data.block_size=32"]
    args += ["--data.batch_size=8", "--data.max_validation_blocks=16", *QUIET]
    args += ["--model.backbone_config.hidden_size=32", "--model.backbone_config.intermediate_size=64"]
    args += ["--trainer.max_steps=10", "--trainer.val_check_interval=5", "--trainer.log_every_n_steps=1"]
    args += ["--trainer.default_root_dir", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "apm_lightning", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "run" / "csv" / "metrics.csv", newline="", encoding="utf-8") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 10 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    results = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert results["objective"] == "shuffled_tokens" and math.isfinite(results["val_loss"])
    assert 0.0 <= results["metrics"]["moved_accuracy"] <= 1.0
    assert (Path(results["hf_export"]) / "model.safetensors").is_file()


# --------------------------------------------------------------------------- prefix LM
def test_prefix_lm_attends_to_the_prefix_both_ways_and_to_the_past_after_it():
    from apm_lightning.modules.objectives.prefix_lm import prefix_lengths, prefix_lm_allowed

    torch.manual_seed(0)
    module = PretrainingModule("prefix_lm", backbone_config=TINY, tokenizer="minilm").eval()
    ids = torch.randint(1000, 2000, (2, 12), generator=torch.Generator().manual_seed(0))
    prefix = torch.tensor([4, 7])
    mask = module.objective.attention_mask(prefix_lm_allowed(prefix, 12))
    logits = module.net(input_ids=ids, attention_mask=mask).logits
    for row, p in enumerate(prefix.tolist()):
        later = ids.clone()
        later[row, p + 2] = 2000  # after the prefix: positions before it do not see the change
        changed = module.net(input_ids=later, attention_mask=mask).logits
        assert torch.allclose(changed[row, : p + 2], logits[row, : p + 2], atol=1e-6)
        assert not torch.allclose(changed[row, p + 2 :], logits[row, p + 2 :], atol=1e-6)
        inside = ids.clone()
        inside[row, p - 1] = 2000  # the prefix's last token: its first position sees it
        assert not torch.allclose(
            module.net(input_ids=inside, attention_mask=mask).logits[row, 0], logits[row, 0]
        )
    # Keyed split points: 1 .. length - 1, the same for a block in any batch.
    keys = row_keys(3, 5, torch.arange(2000))
    lengths = prefix_lengths(keys, 2000, 12, keys.device)
    assert lengths.min() == 1 and lengths.max() == 11
    assert torch.equal(prefix_lengths(keys[7:9], 2, 12, keys.device), lengths[7:9])
    out = module.compute(ids, keys[:2])
    assert out["predicted"] == int((12 - lengths[:2]).sum()) and math.isfinite(out["loss"].item())
    # The eager attention implementation takes the mask as additive: the same loss.
    torch.manual_seed(0)
    eager = {**TINY, "attn_implementation": "eager"}
    eager = PretrainingModule("prefix_lm", backbone_config=eager, tokenizer="minilm").eval()
    assert eager.net.config._attn_implementation == "eager"
    assert eager.compute(ids, keys[:2])["loss"].item() == pytest.approx(out["loss"].item(), abs=1e-5)


@needs_corpus
def test_prefix_lm_trains_and_exports(tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from apm_lightning.cli import main

    run = tmp_path / "run"
    args = ["pretrain", "-c", str(PRETRAIN / "prefix_lm_tiny.yaml"), "--data.files", str(WIKI), *QUIET]
    args += ["--data.max_documents=200", "--data.block_size=32", "--data.batch_size=8"]
    args += ["--data.max_validation_blocks=16", "--trainer.default_root_dir", str(run)]
    args += ["--model.backbone_config.hidden_size=32", "--model.backbone_config.intermediate_size=64"]
    assert main([*args, "--model.attention", "causal"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prefix_lm sets its own attention mask" in err[0]
    assert main([*args, "--trainer.max_steps=4", "--trainer.val_check_interval=2"]) == 0
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert results["objective"] == "prefix_lm" and results["val_loss"] < math.log(30522) + 1.0
    assert 0.0 <= results["metrics"]["next_token_accuracy"] <= 1.0
    classifier = AutoModelForSequenceClassification.from_pretrained(results["hf_export"], num_labels=2)
    assert not classifier.config.is_decoder  # fine-tuned with full attention
    # The export fine-tunes on GLUE (RTE) and on SQuAD (span extraction) by path.
    hf = results["hf_export"]
    glue = ["fit", "-c", str(REPO / "experiments" / "glue" / "rte.yaml"), "--model.backbone", hf]
    glue += ["--data.data_dir", str(GLUE), "--data.max_train_samples=8", "--data.max_eval_samples=8"]
    glue += ["--data.batch_size=4", "--data.max_seq_length=32", "--trainer.max_epochs=1", *QUIET]
    assert main([*glue, "--trainer.default_root_dir", str(tmp_path / "rte")]) == 0
    rte = json.loads((tmp_path / "rte" / "results.json").read_text(encoding="utf-8"))
    assert rte["task"] == "rte" and 0.0 <= rte["metrics"]["accuracy"] <= 1.0
    squad = ["fit", "-c", str(REPO / "experiments" / "squad" / "v1.yaml"), "--model.backbone", hf]
    squad += ["--data.train_file", str(SQUAD / "v1.1" / "dev-v1.1.json"), "--data.split_by_article", "24"]
    squad += ["--data.max_train_samples=8", "--data.max_eval_samples=8", "--data.max_seq_length=64"]
    squad += ["--data.doc_stride=32", "--data.max_query_length=16", "--data.batch_size=4", *QUIET]
    assert (
        main([*squad, "--trainer.max_epochs=1", "--trainer.default_root_dir", str(tmp_path / "squad")]) == 0
    )
    qa = json.loads((tmp_path / "squad" / "results.json").read_text(encoding="utf-8"))
    assert qa["task"] == "squad_v1" and 0.0 <= qa["metrics"]["exact"] <= qa["metrics"]["f1"] <= 100.0
