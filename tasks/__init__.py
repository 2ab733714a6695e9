"""The tasks bertlab fine-tunes for, one file each, in one registry: adding a task is a file and a line here."""

from tasks.base import PAD_VALUE, LabelCounts, Metric, Need, Task, Tokenized, probabilities, segment_ids
from tasks.classification import Classification
from tasks.multi_label import MultiLabel
from tasks.question_answering import QuestionAnswering
from tasks.regression import Regression
from tasks.token_classification import TokenClassification

TASKS: dict[str, Task] = {
    task.name: task
    for task in (Classification(), MultiLabel(), Regression(), TokenClassification(), QuestionAnswering())
}

__all__ = [
    "PAD_VALUE",
    "TASKS",
    "LabelCounts",
    "Metric",
    "Need",
    "Task",
    "Tokenized",
    "probabilities",
    "segment_ids",
]
