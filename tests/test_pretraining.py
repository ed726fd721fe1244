"""Pretraining: packing, masking, the ELECTRA loss, a few steps of each objective, mid-epoch
resume after SIGKILL, export and reload as a GLUE classifier, adaptive pretraining of MiniLM."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import test_fault_tolerance as ft
import torch
import torch.nn.functional as F
from conftest import CORPUS, GLUE, REAL_DATA
from run_options import QUIET

from apm_lightning.cli import main
from apm_lightning.data.corpus import CorpusDataModule
from apm_lightning.modules.objectives.electra import electra_loss
from apm_lightning.modules.objectives.keyed_random import keyed_uniform, row_keys
from apm_lightning.modules.objectives.masking import mask_tokens, sample_tokens
from apm_lightning.modules.pretraining import PretrainingModule

REPO = Path(__file__).resolve().parents[1]
WIKI = CORPUS / "wikitext-2-raw" / "wiki.valid.raw"
PRETRAIN = REPO / "experiments" / "pretrain"


TINY = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def quiet(run_dir: Path, *extra: str, files: bool = True) -> list[str]:
    """A small, quiet pretraining run: 400 documents, blocks of 32, batches of 8."""
    data = ["--data.max_documents=400", "--data.block_size=32", "--data.batch_size=8"]
    data += ["--data.max_validation_blocks=16", "--trainer.default_root_dir", str(run_dir)]
    return [*(["--data.files", str(WIKI)] if files else []), *data, *QUIET, *extra]


def tiny_model_args(objective: str, gpt2: bool = False) -> list[str]:
    """The experiment config shrunk further: 32 wide, 2 layers."""
    if gpt2:
        return ["--model.backbone_config.n_embd", "32", "--model.backbone_config.n_inner", "64"]
    width = ["--model.backbone_config.hidden_size", "32", "--model.backbone_config.intermediate_size", "64"]
    if objective == "electra":
        width += ["--model.backbone_config.embedding_size", "32"]
    return width


# --------------------------------------------------------------------------- packing
def _datamodule(tmp_path: Path, block_size: int = 16) -> CorpusDataModule:
    text = tmp_path / "docs.txt"
    docs = [f"Document number {i} says something about topic {i % 7}." * (1 + i % 3) for i in range(60)]
    if not text.exists():
        text.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    dm = CorpusDataModule(
        files=str(text), tokenizer="minilm", block_size=block_size, batch_size=4, validation_fraction=0.2
    )
    dm.setup("fit")
    return dm


def test_packing_uses_every_token_once_without_padding(tmp_path):
    dm = _datamodule(tmp_path)
    tok = dm.tokenizer
    train = dm.datasets["train"]
    stream = np.asarray(train.tokens).astype(np.int64)
    # The stream is the documents, each followed by [SEP]; the split is by whole document.
    assert dm.meta["train_documents"] + dm.meta["validation_documents"] == 60
    assert dm.meta["validation_documents"] >= 1
    assert int((stream == tok.sep_token_id).sum()) == dm.meta["train_documents"]
    assert stream[-1] == tok.sep_token_id
    assert tok.pad_token_id not in stream
    # Blocks: [CLS] + 15 consecutive stream tokens, in order, the partial tail left out.
    blocks = [train[i]["input_ids"] for i in range(len(train))]
    assert all(b.shape == (16,) and b[0] == tok.cls_token_id for b in blocks)
    assert len(blocks) == len(stream) // 15
    body = torch.cat([b[1:] for b in blocks]).numpy()
    assert np.array_equal(body, stream[: len(blocks) * 15])
    # One epoch of the shuffled training loader serves every block once (full batches only).
    loader = dm.train_dataloader()
    served = [i for batch in loader.batch_sampler for i in batch]
    assert len(served) == len(set(served)) == len(blocks) // 4 * 4
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (4, 16) and "attention_mask" not in batch
    # Each document's ids, then [SEP], in order: the train stream and the validation stream
    # together hold every document exactly once.
    valid = np.asarray(dm.datasets["validation"].tokens).astype(np.int64)
    positions = {"train": 0, "validation": 0}
    streams = {"train": stream, "validation": valid}
    for doc in dm.source.documents():
        ids = tok(doc, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
        for name, tokens in streams.items():
            at = positions[name]
            if np.array_equal(tokens[at : at + len(ids)], ids):
                positions[name] += len(ids)
                break
        else:
            raise AssertionError(f"document not found in order: {doc[:40]}")
    assert positions == {"train": len(stream), "validation": len(valid)}


def test_packing_is_cached_and_memory_mapped(tmp_path):
    dm = _datamodule(tmp_path)
    folder = dm.token_folder()
    assert isinstance(dm.datasets["train"].tokens, np.memmap)
    mtime = (folder / "train-00000.bin").stat().st_mtime_ns
    again = _datamodule(tmp_path)  # same text, same tokenizer: the cache entry is reused
    assert again.token_folder() == folder and (folder / "train-00000.bin").stat().st_mtime_ns == mtime
    with open(tmp_path / "docs.txt", "a", encoding="utf-8") as f:
        f.write("\nOne more document.\n")
    assert _datamodule(tmp_path).token_folder() != folder  # changed text: a new entry


def test_corpus_errors_are_one_clear_line(tmp_path, capsys):
    code = main(
        ["pretrain", "-c", str(PRETRAIN / "mlm_tiny.yaml"), "--data.files", str(tmp_path / "none*.txt")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no text files match" in err[0]
    short = tmp_path / "short.txt"
    short.write_text("too short\n\nfor a block\n", encoding="utf-8")
    code = main(
        [
            "pretrain",
            "-c",
            str(PRETRAIN / "mlm_tiny.yaml"),
            *quiet(tmp_path / "r", "--data.files", str(short)),
        ]
    )
    assert code == 2 and "no train block" in capsys.readouterr().err


# --------------------------------------------------------------------------- masking and losses
def test_masking_statistics_follow_the_80_10_10_rule():
    vocab, mask_id = 1000, 4
    special = torch.zeros(vocab, dtype=torch.bool)
    special[:5] = True
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (400, 250), generator=generator)
    ids[:, 0] = 2  # [CLS]-like specials are never chosen
    ids[:, -1] = 3
    keys = row_keys(seed=0, step=7, rows=torch.arange(400))
    inputs, labels = mask_tokens(ids, special, mask_id, vocab, rate=0.15, keys=keys)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    rate = chosen[:, 1:-1].float().mean().item()
    assert abs(rate - 0.15) < 0.003
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    n = chosen.sum().item()
    masked = (inputs[chosen] == mask_id).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    assert abs(masked - 0.8) < 0.01
    assert abs(kept - 0.1) < 0.01  # (a random replacement equal to the original is 1 in 995)
    assert abs(1 - masked - kept - 0.1) < 0.01
    # Keyed draws: a row's mask depends on its key alone, not on the batch around it; another
    # step gives another mask.
    again, again_labels = mask_tokens(ids[10:20], special, mask_id, vocab, rate=0.15, keys=keys[10:20])
    assert torch.equal(again_labels, labels[10:20])
    other = mask_tokens(ids, special, mask_id, vocab, 0.15, row_keys(0, 8, torch.arange(400)))[1]
    assert not torch.equal(other != -100, chosen)
    # Unkeyed (torch's generator): the same statistics.
    torch.manual_seed(0)
    plain = mask_tokens(ids, special, mask_id, vocab, rate=0.15)[1] != -100
    assert abs(plain[:, 1:-1].float().mean().item() - 0.15) < 0.003


def test_keyed_uniforms_are_uniform_and_sampling_follows_the_softmax():
    u = keyed_uniform(torch.arange(200_000), stream=0)
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean().item() - 0.5) < 0.005
    assert abs(u.var().item() - 1 / 12) < 0.002
    assert not torch.equal(u, keyed_uniform(torch.arange(200_000), stream=1))
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    assert (counts - 20_000).abs().max() < 800  # ~5 sd of a binomial(200000, 0.1)
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(100_000, 3)
    drawn = sample_tokens(logits, keyed_uniform(torch.arange(100_000), stream=3))
    share = torch.bincount(drawn, minlength=3).float() / 100_000
    assert torch.allclose(share, torch.tensor([0.7, 0.2, 0.1]), atol=0.01)


def test_electra_loss_matches_a_hand_computed_example():
    gen_logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    gen_labels = torch.tensor([0, 2])
    disc_logits = torch.tensor([[0.0, 2.0, -1.0]])
    replaced = torch.tensor([[False, True, False]])
    total, gen, disc = electra_loss(gen_logits, gen_labels, disc_logits, replaced, discriminator_weight=50.0)
    # Generator: -log softmax at the labels, averaged over the two masked positions.
    g0 = -(2.0 - math.log(math.exp(2) + 2))
    g1 = -(0.0 - math.log(math.exp(1) + 2))
    # Discriminator: BCE per position, averaged: -log(1/2), -log(sigmoid(2)), -log(1 - sigmoid(-1)).
    d = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 3
    assert gen.item() == pytest.approx((g0 + g1) / 2, abs=1e-6)
    assert disc.item() == pytest.approx(d, abs=1e-6)
    assert total.item() == pytest.approx((g0 + g1) / 2 + 50 * d, abs=1e-5)


def test_sparse_prediction_equals_the_full_head():
    torch.manual_seed(0)
    module = PretrainingModule("mlm", backbone_config=TINY, tokenizer="minilm").eval()
    ids = torch.randint(1000, 2000, (2, 24))
    inputs, labels = mask_tokens(ids, module.special, 103, 30522, 0.15, row_keys(1, 0, torch.arange(2)))
    sparse, targets = module.objective.mlm_logits(inputs, labels)
    full = module.net(input_ids=inputs).logits[labels != -100]
    masked = int((labels != -100).sum())
    # The head's rows come in multiples of 64 (a fixed allocation size), the masked ones first.
    assert 0 < masked < 64 and sparse.shape == (64, 30522)
    assert torch.equal(targets[:masked], labels[labels != -100]) and (targets[masked:] == -100).all()
    assert torch.allclose(sparse[:masked], full, atol=1e-5)
    assert F.cross_entropy(sparse, targets).item() == pytest.approx(
        F.cross_entropy(full, labels[labels != -100]).item(), abs=1e-5
    )
    out = module.objective.compute(ids, row_keys(1, 0, torch.arange(2)))
    assert out["predicted"] == masked
    assert out["loss"].item() == pytest.approx(F.cross_entropy(full, labels[labels != -100]).item(), abs=1e-5)
    expected = (full.argmax(-1) == labels[labels != -100]).float().mean().item()
    assert out["masked_accuracy"].item() == pytest.approx(expected)


def test_the_sparse_head_sees_one_row_count_for_every_batch_of_a_shape():
    """The number of masked tokens changes with every batch; the head's row count must not
    (a new allocation size every step fragmented glibc's heap: TAPT grew 2 GB in 60 steps)."""
    module = PretrainingModule("mlm", backbone_config=TINY, tokenizer="minilm").eval()
    ids = torch.randint(1000, 2000, (8, 32))
    counts, rows = set(), set()
    for step in range(12):
        inputs, labels = mask_tokens(
            ids, module.special, 103, 30522, 0.15, row_keys(1, step, torch.arange(8))
        )
        logits, _ = module.objective.mlm_logits(inputs, labels)
        counts.add(int((labels != -100).sum()))
        rows.add(logits.shape[0])
    assert len(counts) > 3 and rows <= {64}


def test_electra_shares_embeddings_between_generator_and_discriminator():
    config = {
        **TINY,
        "model_type": "electra",
        "embedding_size": 32,
        "hidden_size": 64,
        "intermediate_size": 128,
    }
    module = PretrainingModule("electra", backbone_config=config, tokenizer="minilm")
    gen, disc = module.generator, module.discriminator
    assert gen.electra.embeddings is disc.electra.embeddings
    assert gen.generator_lm_head.weight is disc.electra.embeddings.word_embeddings.weight
    assert gen.config.hidden_size == 16 and disc.config.hidden_size == 64
    params = list(module.parameters())
    assert len({id(p) for p in params}) == len(params)  # the optimizer sees each tensor once


def test_causal_ablation_masks_the_future_bidirectional_does_not():
    causal = PretrainingModule("clm", backbone_config=TINY, tokenizer="minilm", attention="causal").eval()
    ids = torch.randint(1000, 2000, (1, 12))
    changed = ids.clone()
    changed[0, 8] = 2000
    a, b = causal.net(input_ids=ids).logits, causal.net(input_ids=changed).logits
    assert torch.allclose(a[0, :8], b[0, :8]) and not torch.allclose(a[0, 8:], b[0, 8:])
    mlm = PretrainingModule("mlm", backbone_config=TINY, tokenizer="minilm").eval()
    a, b = mlm.net(input_ids=ids).logits, mlm.net(input_ids=changed).logits
    assert not torch.allclose(a[0, :8], b[0, :8])
    with pytest.raises(Exception, match="causal mask"):
        PretrainingModule("clm", backbone_config=TINY, tokenizer="minilm", attention="bidirectional")


# --------------------------------------------------------------------------- end to end
# Every config under experiments/pretrain: the three objectives, and CLM on the BERT encoder.
PRETRAIN_RUNS = {
    "mlm": ["mlm_tiny.yaml"],
    "clm": ["clm_tiny.yaml"],
    "clm-causal-bert": ["clm_tiny.yaml", "causal_bert.yaml"],
    "electra": ["electra_tiny.yaml"],
    "mlm-tapt": ["tapt_minilm_sst2.yaml"],  # MiniLM on SST-2's training text
}


@pytest.mark.parametrize("name", list(PRETRAIN_RUNS))
def test_a_few_steps_of_each_objective_then_classifier_from_export(name, tmp_path):
    objective = name.split("-")[0]
    run = tmp_path / name
    configs = [a for c in PRETRAIN_RUNS[name] for a in ("-c", str(PRETRAIN / c))]
    if name == "mlm-tapt":
        if not GLUE.is_dir():
            pytest.skip("../shared/data/glue is missing")
        args = ["pretrain", *configs, *quiet(run, "--data.data_dir", str(GLUE), files=False)]
    else:
        args = ["pretrain", *configs, *tiny_model_args(objective, gpt2=name == "clm"), *quiet(run)]
    args += ["--trainer.max_steps", "6", "--trainer.val_check_interval", "3"]
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["tokens_seen"] == 6 * 8 * 32
    assert results["train_tokens"] == 6 * 8 * 32 and results["tokens_per_second"] > 0
    assert results["objective"] == objective and math.isfinite(results["val_loss"])
    # Near log(vocab) for a fresh model; ELECTRA's total adds 50 x the discriminator's BCE.
    lm_loss = results["metrics"]["generator_loss"] if objective == "electra" else results["val_loss"]
    assert lm_loss < math.log(30522) + 1.0
    if objective == "electra":
        disc = results["metrics"]["discriminator_loss"]
        # Approximate: the total is averaged per masked token, the BCE per token, so batches with
        # more or fewer masked tokens tilt it; on the generated corpus by about 1.3e-4.
        assert results["val_loss"] == pytest.approx(lm_loss + 50 * disc, rel=1e-4 if REAL_DATA else 1e-3)
    key = {"mlm": "masked_accuracy", "clm": "perplexity", "electra": "replaced_accuracy"}[objective]
    assert key in results["metrics"]
    if objective == "clm":
        assert results["metrics"]["perplexity"] == pytest.approx(math.exp(results["val_loss"]), rel=1e-3)
    # The exported folder is a Hugging Face model the GLUE classifier fine-tunes by path.
    hf = Path(results["hf_export"])
    assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()
    from transformers import AutoModelForSequenceClassification

    from apm_lightning.modules.hf_export import load_module_from_checkpoint

    classifier = AutoModelForSequenceClassification.from_pretrained(hf, num_labels=2)
    pretrained = load_module_from_checkpoint(results["best_checkpoint"]).net
    base = classifier.base_model.state_dict()
    for name, tensor in pretrained.base_model.state_dict().items():
        assert torch.equal(base[name], tensor), name
    if GLUE.is_dir():
        fit = ["fit", "-c", str(REPO / "experiments" / "glue" / "rte.yaml"), "--model.backbone", str(hf)]
        fit += [
            "--data.data_dir",
            str(GLUE),
            "--data.max_train_samples",
            "16",
            "--data.max_eval_samples",
            "16",
        ]
        fit += ["--data.batch_size", "8", "--data.max_seq_length", "32", "--trainer.max_epochs", "1"]
        fit += ["--trainer.default_root_dir", str(tmp_path / "rte"), "--wandb_mode", "disabled"]
        fit += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
        assert main(fit) == 0
        assert "accuracy" in json.loads((tmp_path / "rte" / "results.json").read_text())["metrics"]


# MLM, and the two objectives that draw per block what they predict: prefix LM (the prefix
# length) and span corruption (the noise spans, on a T5).
RESUME_WIDTHS = {"mlm_tiny": tiny_model_args("mlm"), "prefix_lm_tiny": tiny_model_args("prefix_lm")}
RESUME_WIDTHS["span_corruption_tiny"] = [
    "--model.backbone_config.d_model=32",
    "--model.backbone_config.d_ff=64",
]


@pytest.mark.parametrize("recipe", list(RESUME_WIDTHS))
def test_sigkill_mid_epoch_then_resume_is_bitwise_exact(recipe, tmp_path):
    common = ["-c", str(PRETRAIN / f"{recipe}.yaml"), *RESUME_WIDTHS[recipe]]
    common += [
        "--trainer.max_steps",
        "8",
        "--trainer.val_check_interval",
        "4",
        "--trainer.deterministic",
        "true",
    ]
    common += ["--checkpoint_every_n_steps", "2"]
    straight = tmp_path / "straight"
    assert main(["pretrain", *common, *quiet(straight)]) == 0
    run = tmp_path / "killed"
    cmd = ["pretrain", *common, *quiet(run)]
    p = _process(cmd + ft.kill_at(6))
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert ft.checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    p = _process(cmd + ["--ckpt_path", "last"])
    assert p.returncode == 0, p.stderr[-2000:]
    ft.assert_same_training_state(
        ft.checkpoint(straight / "checkpoints" / "last.ckpt"),
        ft.checkpoint(run / "checkpoints" / "last.ckpt"),
    )
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((run / "results.json").read_text())
    assert a["metrics"] == b["metrics"] and a["val_loss"] == b["val_loss"]
    assert a["tokens_seen"] == b["tokens_seen"] == 8 * 8 * 32


def _process(args: list[str]):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "apm_lightning", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())


def test_minilm_gets_a_tied_mlm_head_and_keeps_its_encoder():
    from transformers import AutoModel

    from apm_lightning.core.model_paths import minilm_path

    module = PretrainingModule("mlm", backbone="minilm")
    net = module.net
    assert net.get_output_embeddings().weight is net.get_input_embeddings().weight
    original = AutoModel.from_pretrained(minilm_path()).state_dict()
    encoder = net.base_model.state_dict()
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(encoder[name], original[name])
    assert module.training and net.training  # from_pretrained's eval mode is undone


def test_continue_from_an_apm_checkpoint(tmp_path):
    run = tmp_path / "first"
    args = ["pretrain", "-c", str(PRETRAIN / "mlm_tiny.yaml"), *tiny_model_args("mlm")]
    assert main([*args, *quiet(run, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2")]) == 0
    ckpt = json.loads((run / "results.json").read_text())["best_checkpoint"]
    module = PretrainingModule("mlm", backbone=ckpt, tokenizer="minilm")
    first = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(
        module.net.base_model.embeddings.word_embeddings.weight,
        first["net.bert.embeddings.word_embeddings.weight"],
    )


def test_text_files_in_latin1_are_read_and_strict_utf8_says_which_file(tmp_path):
    from apm_lightning.core.errors import APMError
    from apm_lightning.data.text_sources import TextSource

    old = tmp_path / "caesar.txt"
    old.write_bytes("Ant. C\u00e6sar, my Lord\r\n\r\nSecond paragraph\r\n".encode("latin-1"))
    assert list(TextSource(files=[str(old)]).documents()) == ["Ant. C\u00e6sar, my Lord", "Second paragraph"]
    with pytest.raises(APMError, match=r"caesar.txt is not utf-8 text .*set data.encoding"):
        list(TextSource(files=[str(old)], encoding="utf-8").documents())
