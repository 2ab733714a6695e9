"""The task interface: the loop, the summary, the report and the choices on validation ask the task, so a
metric added to the task's entry shows everywhere, with its direction respected."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    mean_absolute_error,
)

import main
import visualize
from config import load_config
from reporting.summary import validation_score
from tasks import TASKS, Metric
from tasks.classification import of_labels
from test_cli import results
from utils import ConfigError

CLASSIFICATION = TASKS["classification"]


@pytest.fixture
def with_metric(monkeypatch):
    """The classification entry with one more metric, for the length of a test."""

    def add(metric: Metric) -> None:
        monkeypatch.setattr(CLASSIFICATION, "metrics", CLASSIFICATION.metrics + (metric,))

    return add


def test_a_metric_added_to_the_task_shows_in_history_summary_report_and_choices(
    write_config, tmp_path, with_metric
):
    with_metric(Metric("kappa", "Cohen's kappa", of_labels(lambda t, p, n: cohen_kappa_score(t, p))))
    config = write_config()
    assert load_config(config, ["training.early_stopping.metric=val_kappa"])  # an allowed choice now
    status = main.main(
        [
            "--config",
            str(config),
            "--strategy",
            "bitfit",
            "--strategy",
            "full",
            "training.num_epochs=2",
            "training.early_stopping.metric=val_kappa",
        ]
    )
    assert status == 0
    for record in results(tmp_path):
        assert all("val_kappa" in h for h in record["history"])
        assert record["best_metric"] == max(h["val_kappa"] for h in record["history"])
        assert record["test"]["kappa"] == pytest.approx(
            cohen_kappa_score(record["test_labels"], record["test_predictions"])
        )
        assert record["dataset"]["majority_baseline"]["kappa"] == 0
    summary = (tmp_path / "outputs" / "results" / "summary.md").read_text()
    assert "| validation Cohen's kappa |" in summary and "| test Cohen's kappa |" in summary
    assert "test_kappa_mean" in (tmp_path / "outputs" / "results" / "summary.csv").read_text()
    assert visualize.main(["--output-dir", str(tmp_path / "outputs")]) == 0
    report = (tmp_path / "outputs" / "report.html").read_text()
    assert "<th>test Cohen&#x27;s kappa</th>" in report and "validation Cohen&#x27;s kappa" in report


def test_a_lower_is_better_metric_is_minimised_by_every_choice(write_config, tmp_path, with_metric):
    with_metric(
        Metric(
            "mae",
            "mean absolute error",
            of_labels(lambda t, p, n: mean_absolute_error(t, p)),
            higher_is_better=False,
        )
    )
    assert CLASSIFICATION.is_better("val_mae", 0.2, 0.3) and not CLASSIFICATION.is_better("val_mae", 0.3, 0.2)
    assert CLASSIFICATION.is_better("val_loss", 0.2, 0.3) and CLASSIFICATION.is_better(
        "val_accuracy", 0.3, 0.2
    )
    status = main.main(
        [
            "--config",
            str(write_config()),
            "--strategy",
            "full",
            "training.num_epochs=3",
            "training.early_stopping.enabled=false",
            "training.early_stopping.metric=val_mae",
        ]
    )
    assert status == 0
    [record] = results(tmp_path)
    best = min(record["history"], key=lambda h: h["val_mae"])
    assert record["best_epoch"] == best["epoch"] and validation_score(record, "val_mae") == best["val_mae"]


def test_an_unknown_early_stopping_metric_lists_the_tasks_choices(write_config):
    with pytest.raises(
        ConfigError,
        match=r"training\.early_stopping\.metric: got 'val_f1', allowed: val_loss, "
        r"val_accuracy, val_macro_f1, .*, val_log_loss, val_ece "
        r"\(validation metrics of classification\)",
    ):
        load_config(write_config(), ["training.early_stopping.metric=val_f1"])


def test_classification_sums_give_the_metrics_of_every_weighting():
    """The bootstrap's shortcut (weighted sums of per-example statistics) equals scikit-learn on the examples
    each weighting stands for."""
    rng = np.random.default_rng(1)
    truth, predictions = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    statistics = CLASSIFICATION.example_statistics(truth, predictions, ["a", "b", "c", "d"])
    counts = rng.multinomial(60, np.full(60, 1 / 60), size=5).astype(np.float32)
    scores = CLASSIFICATION.metrics_from_sums(counts @ statistics, counts.sum(1), ["a", "b", "c", "d"])
    for i, weights in enumerate(counts.astype(int)):
        t, p = np.repeat(truth, weights), np.repeat(predictions, weights)
        assert scores["accuracy"][i] == pytest.approx(accuracy_score(t, p))
        assert scores["macro_f1"][i] == pytest.approx(
            f1_score(t, p, labels=range(4), average="macro", zero_division=0)
        )
        assert scores["balanced_accuracy"][i] == pytest.approx(balanced_accuracy_score(t, p))
        assert scores["worst_class_f1"][i] == pytest.approx(
            f1_score(t, p, labels=np.unique(t), average=None, zero_division=0).min()
        )


def test_every_plot_and_diagnostic_a_task_names_exists_and_only_those_of_its_own_apply():
    from reporting.diagnostics import DIAGNOSTICS
    from reporting.plots import PLOTS

    for task in TASKS.values():
        assert set(task.plots) <= {key for key, plot in PLOTS.items() if plot.task_own}, task.name
        assert set(task.diagnostics) <= {key for key, (_, own) in DIAGNOSTICS.items() if own}, task.name
    assert (
        "confusion_matrix" in TASKS["classification"].plots
        and "confusion_matrix" not in TASKS["regression"].plots
    )
    assert TASKS["question_answering"].plots == () and TASKS["question_answering"].diagnostics == ()
