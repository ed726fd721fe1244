"""The grid protocol's pure parts: parsing, folder names, selection by the median over seeds."""

from __future__ import annotations

import pytest

from apm_lightning.core.errors import APMError
from apm_lightning.runners.glue_grid import (
    grid_rows,
    parse_grid,
    select,
    setting_args,
    setting_folder,
    setting_label,
)


def test_parse_grid_is_the_product_in_the_order_written():
    settings = parse_grid(["model.learning_rate=2e-5,3e-5", "--data.batch_size=16,32"])
    assert settings == [
        {"model.learning_rate": "2e-5", "data.batch_size": "16"},
        {"model.learning_rate": "2e-5", "data.batch_size": "32"},
        {"model.learning_rate": "3e-5", "data.batch_size": "16"},
        {"model.learning_rate": "3e-5", "data.batch_size": "32"},
    ]
    assert parse_grid([]) == [{}]
    assert setting_args(settings[1]) == ["--model.learning_rate", "2e-5", "--data.batch_size", "32"]
    assert setting_label(settings[1]) == "learning_rate=2e-5,batch_size=32"
    assert setting_label({}) == "recipe"
    assert setting_folder({"model.backbone_config.hidden_size": "a/b c"}) == "hidden_size=a_b_c"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("learning_rate=1e-5", "dotted apm fit option"),
        ("model.learning_rate", "dotted apm fit option"),
        ("seed_everything=1,2", "dotted apm fit option"),
        ("model.learning_rate=", "lists no values"),
        ("model.learning_rate=1e-5,1e-5", "repeats a value"),
    ],
)
def test_bad_grids_are_one_line(value, message):
    with pytest.raises(APMError, match=message):
        parse_grid([value])
    with pytest.raises(APMError, match="twice"):
        parse_grid(["model.learning_rate=1", "model.learning_rate=2"])


def test_selection_is_by_the_median_not_the_best_seed():
    # 5e-5 has the single best seed (0.90) but the lower median: the protocol picks 3e-5.
    scores = {"lr=2e-5": [0.70, 0.71, 0.69], "lr=3e-5": [0.80, 0.79, 0.81], "lr=5e-5": [0.90, 0.50, 0.52]}
    assert select(scores) == "lr=3e-5"
    assert select({"a": [0.5], "b": [0.5]}) == "a"  # ties: the first written
    assert select({"a": [], "b": [0.1]}) == "b" and select({"a": []}) is None
    rows = grid_rows({"rte": scores}, {"rte": "lr=3e-5"})
    assert [r["chosen"] for r in rows] == ["", "yes", ""]
    assert rows[1]["score_median"] == pytest.approx(0.80) and rows[1]["n"] == 3


def test_apm_glue_grid_end_to_end(tmp_path, glue_dir):
    """RTE with a 2-value learning-rate grid and 2 seeds: 4 runs; the task reports the setting
    with the best median, its best seed predicts the test split, the tables show the grid."""
    import json
    from pathlib import Path

    from apm_lightning.cli import main

    tiny = str(Path(__file__).resolve().parents[1] / "experiments" / "models" / "tiny_bert.yaml")
    out = tmp_path / "out"
    args = ["glue", "--model", tiny, "--tasks", "rte", "--seeds", "2", "--data-dir", str(glue_dir)]
    args += ["--out", str(out), "--launcher", "inprocess", "--max-train-samples", "16", "--max-eval-samples"]
    args += ["16", "--epochs", "1", "--data.batch_size", "8", "--data.max_seq_length", "32"]
    args += ["--grid", "model.learning_rate=1e-5,3e-3", "--wandb_mode", "disabled"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    assert main(args) == 0
    record = json.loads((out / "glue_score.json").read_text())
    grid = record["grid"]
    assert grid["settings"] == ["learning_rate=1e-5", "learning_rate=3e-3"]
    medians = {}
    for label in grid["settings"]:
        runs = [json.loads((out / "runs/rte" / label / f"seed{s}/results.json").read_text()) for s in (0, 1)]
        assert {r["config"]["model"]["init_args"]["learning_rate"] for r in runs} == {
            float(label.split("=")[1])
        }
        medians[label] = sum(r["metrics"]["main"] for r in runs) / 2
    chosen = max(medians, key=lambda k: (medians[k], -grid["settings"].index(k)))
    assert grid["chosen"] == {"rte": chosen}
    task = record["tasks"]["rte"]
    assert task["score_median"] == pytest.approx(medians[chosen]) and task["n"] == 2
    assert chosen in task["note"]
    assert (
        out / "runs/rte" / chosen / f"seed{task['submission_seed']}/predict/predictions/rte_test.tsv"
    ).is_file()
    assert len((out / "results.csv").read_text().splitlines()) == 5  # every run of every setting
    assert "## Grid" in (out / "results.md").read_text() and (out / "grid.csv").is_file()
    # A value added to the grid trains that value only; finished runs are kept and compete.
    kept = {p: p.stat().st_mtime_ns for p in (out / "runs/rte").glob("*/seed*/results.json")}
    grown = [
        a if a != "model.learning_rate=1e-5,3e-3" else "model.learning_rate=1e-5,3e-3,1e-4" for a in args
    ]
    assert main(grown) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    record = json.loads((out / "glue_score.json").read_text())
    assert record["grid"]["settings"] == [*grid["settings"], "learning_rate=1e-4"]
    assert len((out / "results.csv").read_text().splitlines()) == 7
    assert (out / "runs/rte/learning_rate=1e-4/seed1/results.json").is_file()
    # A grid over another option into the same OUT is refused, not mixed in.
    other = [a if a != "model.learning_rate=1e-5,3e-3" else "data.batch_size=4,8" for a in args]
    assert main(other) == 2


def test_protocol_file_gives_the_options_and_the_command_line_wins(tmp_path):
    from apm_lightning.runners.glue_args import build_parser, protocol_argv

    parser = build_parser(None)
    shipped = protocol_argv(parser, "glue_protocols/minilm_grid", [])  # found as a shipped recipe
    args, extra = parser.parse_known_args(shipped)
    assert args.tasks == "cola,sst2,mrpc,stsb,rte" and args.seeds == 3 and not extra
    assert args.grid == ["model.learning_rate=3e-5,5e-5,1e-4,2e-4"]

    own = tmp_path / "protocol.yaml"
    own.write_text("tasks: [rte, mrpc]\nseeds: 3\nno-submission: true\ngrid: model.learning_rate=1e-5,2e-5\n")
    argv = ["--seeds", "1", "--grid", "data.batch_size=8,16"]
    args, _ = parser.parse_known_args(protocol_argv(parser, str(own), argv))
    assert (args.tasks, args.seeds, args.no_submission) == ("rte,mrpc", 1, True)
    assert args.grid == ["data.batch_size=8,16"]  # the command line's list replaces the file's


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate: 1e-4\n", "'learning_rate', which is not an apm glue option"),
        ("tasks: [rte\n", "not valid YAML"),
        ("- rte\n", "must map option names"),
    ],
)
def test_bad_protocol_files_are_one_line(tmp_path, text, message):
    from apm_lightning.cli import main

    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(text)
    out = tmp_path / "out"
    with pytest.raises(APMError, match=message):
        from apm_lightning.runners.glue import glue_main

        glue_main(["--protocol", str(protocol), "--out", str(out)])
    assert main(["glue", "--protocol", str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2
    assert not out.exists()
