"""apm's LightningModules: what is trained (classification, question answering, pretraining).

Importing the package registers each module class with ``apm_lightning.core.trust``, the only
classes a checkpoint may name.
"""

from apm_lightning.modules.bilstm_classifier import BiLSTMClassifier
from apm_lightning.modules.classification import TransformerClassifier
from apm_lightning.modules.generative_qa import GenerativeQAModule
from apm_lightning.modules.pretraining import PretrainingModule
from apm_lightning.modules.question_answering import QuestionAnsweringModule
from apm_lightning.modules.text_to_text import TextToTextClassifier

__all__ = [
    "BiLSTMClassifier",
    "GenerativeQAModule",
    "PretrainingModule",
    "QuestionAnsweringModule",
    "TextToTextClassifier",
    "TransformerClassifier",
]
