"""SQuAD scores exactly as the official evaluation scripts compute them.

v1.1 (``evaluate-v1.1.py``): answers are normalised (lower case, punctuation and the articles
a/an/the removed, whitespace collapsed); a question scores the best exact match and the best
token-overlap F1 over its gold answers; a question without a prediction scores 0.

v2.0 (``evaluate-v2.0.py``): an unanswerable question's only gold answer is ``""``, so it scores
1 for an empty prediction and 0 otherwise; gold answers that normalise to nothing are dropped;
questions without a prediction are left out of the totals. Scores are split into ``HasAns`` and
``NoAns``, and with no-answer scores (``na_probs``: higher means more likely unanswerable) the
script searches the threshold that maximises EM and F1 (``find_best_thresh``).

All values are on the scripts' 0-100 scale. ``golds`` maps a question id to its gold answer
texts (an empty list for an unanswerable question), as :func:`gold_answers` reads them.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, remove punctuation, articles and extra whitespace (the scripts' order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_score(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 (0-1) of the normalised answers; two empty answers agree (v2.0)."""
    pred_tokens, gold_tokens = _tokens(prediction), _tokens(gold)
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_answers(articles: Iterable[Mapping]) -> dict[str, list[str]]:
    """Question id -> gold answer texts, from the ``data`` list of a SQuAD JSON file."""
    return {
        qa["id"]: [a["text"] for a in qa["answers"]]
        for article in articles
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    }


def squad_v1_scores(golds: Mapping[str, list[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """``{"exact", "f1", "total"}`` as ``evaluate-v1.1.py`` (its ``exact_match`` is ``exact``)."""
    exact = f1 = 0.0
    for qid, answers in golds.items():
        if qid not in predictions:  # the official script: "will receive score 0"
            continue
        exact += max(exact_score(predictions[qid], a) for a in answers)
        f1 += max(f1_score(predictions[qid], a) for a in answers)
    total = len(golds)
    return {"exact": 100.0 * exact / total, "f1": 100.0 * f1 / total, "total": total}


def raw_scores_v2(
    golds: Mapping[str, list[str]], predictions: Mapping[str, str]
) -> tuple[dict[str, int], dict[str, float]]:
    """Per-question exact and F1 (0-1) as ``get_raw_scores`` of ``evaluate-v2.0.py``."""
    exact, f1 = {}, {}
    for qid, answers in golds.items():
        if qid not in predictions:
            continue
        answers = [a for a in answers if normalize_answer(a)] or [""]
        exact[qid] = max(exact_score(predictions[qid], a) for a in answers)
        f1[qid] = max(f1_score(predictions[qid], a) for a in answers)
    return exact, f1


def _apply_threshold(scores, na_probs, has_ans, threshold):
    return {
        qid: float(not has_ans[qid]) if na_probs[qid] > threshold else score for qid, score in scores.items()
    }


def _mean(scores: Mapping[str, float], qids: Iterable[str]) -> float:
    qids = list(qids)
    return 100.0 * sum(scores[q] for q in qids) / len(qids)


def find_best_thresh(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    """The best score over no-answer thresholds and that threshold, step for step as
    ``find_best_thresh`` of the official script: start from answering nothing (each
    unanswerable question right) with threshold 0.0, answer the questions by rising ``na_probs``
    and keep the threshold only where the score strictly rises. Where answering never helps,
    the threshold stays 0.0 (the script's convention, also the reference code's default
    null-score-difference threshold)."""
    current = best = sum(1 for q in has_ans if not has_ans[q])
    threshold = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, threshold = current, na_probs[qid]
    return 100.0 * best / len(scores), threshold


def squad_v2_scores(
    golds: Mapping[str, list[str]],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """The dictionary ``evaluate-v2.0.py`` prints: ``exact``, ``f1``, ``total``,
    ``HasAns_*``/``NoAns_*`` (when such questions exist) and, given ``na_probs``,
    ``best_exact``, ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh``."""
    has_ans = {qid: bool(answers) for qid, answers in golds.items()}
    exact_raw, f1_raw = raw_scores_v2(golds, predictions)
    probs = dict(na_probs) if na_probs is not None else dict.fromkeys(predictions, 0.0)
    exact = _apply_threshold(exact_raw, probs, has_ans, na_prob_thresh)
    f1 = _apply_threshold(f1_raw, probs, has_ans, na_prob_thresh)
    out: dict[str, float] = {"exact": _mean(exact, exact), "f1": _mean(f1, f1), "total": len(exact)}
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        # Questions without a prediction are left out here too (the script would fail on them).
        qids = [q for q, has in has_ans.items() if has == wanted and q in exact]
        if qids:
            out.update(
                {
                    f"{prefix}_exact": _mean(exact, qids),
                    f"{prefix}_f1": _mean(f1, qids),
                    f"{prefix}_total": len(qids),
                }
            )
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(predictions, exact_raw, probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(predictions, f1_raw, probs, has_ans)
    return out


def squad_v2_tuned(
    golds: Mapping[str, list[str]], answers: Mapping[str, str], null_odds: Mapping[str, float]
) -> tuple[dict[str, float], float]:
    """Scores of a v2.0 model whose no-answer threshold is chosen on these questions.

    ``answers`` holds each question's best non-empty answer and ``null_odds`` its null-score
    difference (null score minus best span score). The threshold is the official
    ``best_f1_thresh``; the model predicts ``""`` above it. Returns the official breakdown of
    those final predictions, the ``best_*`` values, and the threshold. ``f1`` equals ``best_f1``
    except where answering never beats answering nothing: the official threshold is then 0.0
    (its convention) and ``exact``/``f1`` are those of the predictions at 0.0, which the model
    makes (``best_f1`` stays the script's score of answering nothing).
    """
    has_ans = {qid: bool(a) for qid, a in golds.items()}
    exact_raw, f1_raw = raw_scores_v2(golds, answers)
    best = {}
    for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
        best[f"best_{name}"], best[f"best_{name}_thresh"] = find_best_thresh(answers, raw, null_odds, has_ans)
    threshold = best["best_f1_thresh"]
    final = {qid: "" if null_odds[qid] > threshold else text for qid, text in answers.items()}
    return {**squad_v2_scores(golds, final), **best}, threshold
