"""Fixes found by benchmarks/hostile_cases.py (issue 10)."""

from __future__ import annotations

from pathlib import Path

import torch

from apm_lightning.cli import main


class Payload:
    """Unpickled without weights_only, this would run ``exec`` and write the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pickle ran')",))


def test_a_pickled_payload_is_named_in_one_plain_line(tmp_path, capsys):
    """torch's refusal is a paragraph with terminal escapes whose first line gives no reason;
    the error names the refused global, in one line without escapes."""
    marker = tmp_path / "marker"
    ckpt = tmp_path / "pickle.ckpt"
    torch.save({"state_dict": {}, "extra": Payload(marker)}, ckpt)
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"apm: error: checkpoint {ckpt} could not be read safely")
    assert "Unsupported global: GLOBAL exec" in err[0] and "--allow_unsafe_checkpoints true" in err[0]
    assert "\x1b" not in err[0]
    assert not marker.exists() and not (tmp_path / "hf").exists()
