"""Where data comes from: a local folder, the Hugging Face hub, or a small synthetic task.

Offline first: a local folder always wins, and the hub is only tried after a short reachability
check (``apm_lightning.core.hub``), so a machine without network gets a clear error in about a
second instead of a 30-second stall inside ``datasets``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

DATA_DIR_ENV = "APM_DATA_DIR"


def data_root() -> Path | None:
    """The local data root named by ``APM_DATA_DIR`` (with ``glue/``, ``squad/``, ``corpus/``)."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


# --- a synthetic sentiment task in the SST-2 layout --------------------------------------------
# Used by the demo when neither local GLUE data nor the hub is available: small, learnable,
# and written as real TSV files so that it goes through the same reader as GLUE itself.
_POSITIVE = "wonderful charming moving brilliant delightful gripping funny tender superb honest".split()
_NEGATIVE = "dull tedious clumsy boring shallow bland awkward lifeless muddled forgettable".split()
_SUBJECTS = (
    "the film|this movie|the story|the cast|the script|the ending|the director 's work|the soundtrack".split(
        "|"
    )
)
_VERBS = "is|feels|seems|remains|turns out to be".split("|")
_ADVERBS = ["", "really ", "quite ", "utterly ", "often "]


def _synthetic_sentence(rng: random.Random) -> tuple[str, int]:
    label = rng.randrange(2)
    negated = rng.random() < 0.25  # "not dull" is positive: the model must read two words
    polarity = label ^ negated
    adjective = rng.choice(_POSITIVE if polarity else _NEGATIVE)
    parts = [
        rng.choice(_SUBJECTS),
        rng.choice(_VERBS),
        "not" if negated else "",
        rng.choice(_ADVERBS) + adjective,
    ]
    return " ".join(p for p in parts if p) + " . ", label


def write_synthetic_sst2(root: str | Path, train: int = 2000, dev: int = 400, test: int = 200) -> Path:
    """Write a synthetic task in the SST-2 layout under ``root/SST-2`` and return ``root``."""
    root = Path(root)
    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, n in (("train.tsv", train), ("dev.tsv", dev)):
        rows = [_synthetic_sentence(rng) for _ in range(n)]
        (folder / name).write_text(
            "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows), encoding="utf-8"
        )
    rows = [_synthetic_sentence(rng) for _ in range(test)]
    (folder / "test.tsv").write_text(
        "index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, (s, _) in enumerate(rows)),
        encoding="utf-8",
    )
    return root
