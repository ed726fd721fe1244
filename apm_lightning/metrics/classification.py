"""The metrics of a classification (or regression) task, as GLUE defines them, computed by
torchmetrics. A task names its metrics (``apm_lightning.data.task_spec.METRIC_NAMES``):

CoLA (and AX): Matthews correlation; SST-2, QNLI, RTE, WNLI, MNLI: accuracy; MRPC and QQP: F1 of
the positive class and accuracy; STS-B: Pearson and Spearman correlation. A task's main score is
the mean of its metrics, as the GLUE paper scores a task with two metrics, or the one metric its
``main_metric`` names.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryMatthewsCorrCoef,
    MulticlassAccuracy,
    MulticlassMatthewsCorrCoef,
)
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from apm_lightning.data.task_spec import TaskSpec


class GlueBinaryMCC(BinaryMatthewsCorrCoef):
    """Matthews correlation as GLUE scores it (scikit-learn's ``matthews_corrcoef``): 0 when a
    row or column of the confusion matrix is empty. torchmetrics instead returns a limiting value
    there (0.29 for an all-positive guess on a 4:2 set, 1.0 for one class predicted perfectly),
    which would give a constant predictor on CoLA a non-zero score."""

    def compute(self) -> torch.Tensor:
        tn, fp, fn, tp = self.confmat.reshape(-1).tolist()
        if (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) == 0:
            return torch.tensor(0.0, device=self.confmat.device)
        return super().compute()


def build_metrics(task: TaskSpec) -> MetricCollection:
    """A metric collection for ``task``; update it with predicted class ids (or scores for
    STS-B) and targets."""
    metrics = {}
    for name in task.metrics:
        if name == "accuracy":
            # micro average = plain accuracy over examples, which is what GLUE reports.
            metrics[name] = MulticlassAccuracy(num_classes=task.num_labels, average="micro")
        elif name == "f1":
            metrics[name] = BinaryF1Score()
        elif name == "mcc":
            metrics[name] = (
                GlueBinaryMCC()
                if task.num_labels == 2
                else MulticlassMatthewsCorrCoef(num_classes=task.num_labels)
            )
        elif name == "pearson":
            metrics[name] = PearsonCorrCoef()
        elif name == "spearman":
            metrics[name] = SpearmanCorrCoef()
        else:
            raise ValueError(f"unknown metric {name!r}")  # task files are checked against the list
    return MetricCollection(metrics)


def predictions_from_logits(task: TaskSpec, logits: torch.Tensor) -> torch.Tensor:
    """Class ids for classification, the predicted score for regression."""
    if task.is_regression:
        return logits.squeeze(-1).float()
    return logits.argmax(dim=-1)


def main_score(values: dict[str, float], task: TaskSpec) -> float:
    """The task's single score: the mean of its metrics (GLUE averages two-metric tasks), or its
    main metric."""
    return sum(float(values[m]) for m in task.score_metrics) / len(task.score_metrics)
