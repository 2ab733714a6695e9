"""Experiments: the grid and its validation, the run cache, aggregation and the paired test."""

import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score

from config import load_config, strategy_settings
from data import few_shot_rows
import main
from experiment import plan_runs
from reporting.summary import aggregate, paired_bootstrap, summarize
from reporting.tables import summary_markdown
from tasks import TASKS
from test_cli import results
from utils import ConfigError

CLASSIFICATION = TASKS["classification"]


def test_rates_ranks_sweep_and_seeds_multiply_into_single_run_configs(write_config):
    config = write_config(
        ablation={"learning_rates": [1e-5, 2e-5]},
        strategies={
            "lora": {"learning_rates": [1e-3, 3e-3, 1e-2], "rank_values": [4, 8]},
            "prompt_tuning": {"num_virtual_tokens": 4},
        },
        sweep={"training.batch_size": [4, 8], "strategies.lora.alpha": [8, 32]},
        training={"seeds": [0, 1, 2]},
    )
    cfg = load_config(config)
    runs = plan_runs(cfg, ["full", "lora"])
    full = [r for r in runs if r.strategy == "full"]
    lora = [r for r in runs if r.strategy == "lora"]
    assert len(full) == 2 * 2 * 3  # global rates x batch sizes x seeds; the lora alpha sweep is not full's
    # own rates (replacing the global ones) x ranks x batch x alpha x seeds
    assert len(lora) == 3 * 2 * 2 * 2 * 3
    assert {strategy_settings(r.cfg, "full").learning_rate for r in full} == {1e-5, 2e-5}
    assert {
        (strategy_settings(r.cfg, "lora").rank, strategy_settings(r.cfg, "lora").alpha) for r in lora
    } == {(4, 8), (4, 32), (8, 8), (8, 32)}
    assert {r.cfg.training.seed for r in runs} == {0, 1, 2}
    assert all(r.cfg.training.seeds is None and r.cfg.sweep == {} for r in runs)  # no lists left in a run
    keys = {json.dumps(r.key("fingerprint"), sort_keys=True) for r in runs}
    assert len(keys) == len(runs)  # every run has its own id
    assert set(lora[0].varied) == {
        "strategies.lora.learning_rate",
        "strategies.lora.rank",
        "training.batch_size",
        "strategies.lora.alpha",
    }


@pytest.mark.parametrize(
    "sweep, message",
    [
        (
            {"training.bach_size": [8]},
            "the run with training.bach_size=8: unknown key 'training.bach_size'; "
            "did you mean 'training.batch_size'?",
        ),
        (
            {"training.batch_size": [8, 0]},
            "the run with training.batch_size=0: training.batch_size: got 0, allowed: an integer >= 1",
        ),
        (
            {"training.learning_rate": ["fast"]},
            "training.learning_rate: expected a finite number, got 'fast'",
        ),
        ({"training.seed": [1, 2]}, "sweep.training.seed: cannot be swept (list seeds in training.seeds)"),
        ({"model.max_length": []}, "sweep: expected a mapping of dotted keys to non-empty lists"),
    ],
)
def test_a_mistake_in_the_grid_fails_before_anything_runs(write_config, sweep, message):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(sweep=sweep))
    assert message in str(err.value)


VARIANTS = {
    "plain": {},
    "weighted": {"training.class_weights": "balanced"},
    "focal": {"training.loss": "focal"},
    "oversampled": {"training.sampler": "oversample"},
}


def test_named_variants_are_compared_side_by_side_crossed_with_the_sweep(write_config):
    cfg = load_config(
        write_config(variants=VARIANTS, sweep={"training.batch_size": [4, 8]}, training={"seeds": [0, 1]})
    )
    runs = plan_runs(cfg, ["full", "bitfit"])
    assert len(runs) == 2 * 4 * 2 * 2  # strategies x variants x batch sizes x seeds
    full = [
        r
        for r in runs
        if r.strategy == "full" and r.cfg.training.seed == 0 and r.cfg.training.batch_size == 4
    ]
    settings = {
        r.varied["variant"]: (r.cfg.training.class_weights, r.cfg.training.loss, r.cfg.training.sampler)
        for r in full
    }
    assert settings == {
        "plain": (None, "cross_entropy", "random"),
        "weighted": ("balanced", "cross_entropy", "random"),
        "focal": (None, "focal", "random"),
        "oversampled": (None, "cross_entropy", "oversample"),
    }
    assert len({r.run_id("fingerprint") for r in runs}) == len(runs)
    assert all(r.cfg.variants == {} for r in runs)


def test_variants_run_and_each_is_compared_with_the_first(write_config, tmp_path):
    # the config file lists them in this order (the test's YAML is written sorted): the first is the reference
    variants = {
        "baseline": {},
        "oversampled": {"training.sampler": "oversample"},
        "weighted": {"training.class_weights": "balanced"},
    }
    config = write_config(variants=variants, training={"seeds": [0, 1], "num_epochs": 1})
    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    records = results(tmp_path)
    assert [r["varied"]["variant"] for r in records] == ["baseline"] * 2 + ["oversampled"] * 2 + [
        "weighted"
    ] * 2
    assert {
        r["hyperparameters"]["class_weights"] for r in records if r["varied"]["variant"] == "weighted"
    } == {"balanced"}
    summary = (tmp_path / "outputs" / "results" / "summary.md").read_text()
    assert (
        "| bitfit: oversampled vs bitfit: baseline | 2 |" in summary
        and "| bitfit: weighted vs bitfit: baseline | 2 |" in summary
    )
    assert "variant_comparisons.csv" in {p.name for p in (tmp_path / "outputs" / "results").iterdir()}


@pytest.mark.parametrize(
    "variants, message",
    [
        (
            {"a": {"training.seed": 1}},
            "variants.a.training.seed: cannot be set in a variant (list seeds in training.seeds)",
        ),
        (
            {"a": {"training.los": "focal"}},
            "sweep and variants: the run with variant=a, training.batch_size=4: unknown key 'training.los'; "
            "did you mean 'training.loss'?",
        ),
        (
            {"a": {"training.loss": "hinge"}},
            "training.loss: expected one of 'cross_entropy', 'focal', got 'hinge'",
        ),
        (
            {"a": {"training.batch_size": 4}},
            "variants.a.training.batch_size: also swept in sweep.training.batch_size",
        ),
        ({"a": ["training.loss"]}, "variants: expected a mapping of names to settings"),
    ],
)
def test_a_mistake_in_a_variant_fails_before_anything_runs(write_config, variants, message):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(variants=variants, sweep={"training.batch_size": [4, 8]}))
    assert message in str(err.value)


def test_grid_lists_are_validated(write_config):
    config = write_config(
        training={"seeds": [1, 1]},
        strategies={"lora": {"rank_values": [0, 4]}},
        few_shot={"shots_per_class": [0], "repeats": 0},
    )
    with pytest.raises(ConfigError) as err:
        load_config(config)
    for expected in (
        "training.seeds: got [1, 1], allowed: a non-empty list of distinct integers",
        "strategies.lora.rank_values: got [0, 4], allowed: a non-empty list of distinct integers >= 1",
        "few_shot.shots_per_class: got [0]",
        "few_shot.repeats: got 0",
    ):
        assert expected in str(err.value)


def test_runs_are_cached_and_only_new_ones_run(write_config, tmp_path, main_here):
    config = write_config(
        ablation={"learning_rates": [1e-4, 3e-4]}, training={"seeds": [0, 1], "num_epochs": 1}
    )
    args = ["--config", config, "--strategy", "full", "--strategy", "bitfit"]
    first = main_here(*args)
    assert first.returncode == 0, first.stderr
    assert "8 run(s) planned: 0 already completed (reused; --force runs them again), 8 to run" in first.stderr
    assert len(results(tmp_path)) == 8
    again = main_here(*args)
    assert "8 run(s) planned: 8 already completed" in again.stderr and "8 to run" not in again.stderr
    assert " run 1/8" not in again.stderr and len(results(tmp_path)) == 8
    plan = main_here(*args, "training.seeds=[0,1,2]", "--dry-run")
    assert "12 run(s) planned: 8 already completed" in plan.stdout and "4 to run" in plan.stdout
    assert "trainable of" in plan.stdout and "rough time" in plan.stdout and len(results(tmp_path)) == 8
    more = main_here(*args, "training.seeds=[0,1,2]")
    assert more.returncode == 0 and "4 to run" in more.stderr
    runs = results(tmp_path)
    assert len(runs) == 12 and sorted(r["seed"] for r in runs) == [0] * 4 + [1] * 4 + [2] * 4
    forced = main_here(
        "--config",
        config,
        "--strategy",
        "bitfit",
        "ablation.learning_rates=[1e-4]",
        "training.seeds=[0]",
        "--force",
    )
    assert "1 run(s) planned: 0 already completed" in forced.stderr and "run 1/1" in forced.stderr
    summary = (tmp_path / "outputs" / "results" / "summary.md").read_text()
    assert "| bitfit | 1.0e-04 | 1 |" in summary
    csv_rows = (tmp_path / "outputs" / "results" / "summary.csv").read_text().splitlines()
    assert len(csv_rows) == 2 and csv_rows[0].startswith("config_id,strategy,learning_rate")


def test_few_shot_runs_train_on_k_per_class_and_test_on_the_full_splits(write_config, tmp_path, main_here):
    config = write_config(
        few_shot={"enabled": True, "shots_per_class": [2, 4], "repeats": 2}, training={"num_epochs": 1}
    )
    result = main_here("--config", config, "--strategy", "bitfit")
    assert result.returncode == 0, result.stderr
    runs = results(tmp_path)
    assert sorted((r["few_shot"]["shots_per_class"], r["few_shot"]["draw"]) for r in runs) == [
        (2, 0),
        (2, 1),
        (4, 0),
        (4, 1),
    ]
    for run in runs:
        assert run["dataset"]["sizes"] == {
            "train": 3 * run["few_shot"]["shots_per_class"],
            "validation": 18,
            "test": 18,
        }
    assert len({r["config_id"] for r in runs}) == 2  # draws of one k are one configuration


def test_few_shot_rows_are_k_per_class_nested_and_reproducible():
    labels = [0] * 10 + [1] * 5 + [2] * 3
    eight = few_shot_rows(labels, 4, seed=1, draw=0)
    assert sorted(np.bincount(np.asarray(labels)[eight]).tolist()) == [3, 4, 4]  # class 2 has only 3
    assert set(few_shot_rows(labels, 2, seed=1, draw=0)) <= set(eight)
    assert few_shot_rows(labels, 4, seed=1, draw=0) == eight != few_shot_rows(labels, 4, seed=1, draw=1)


def test_aggregate_gives_mean_sample_std_and_t_interval():
    result = aggregate([0.80, 0.82, 0.87])
    assert result["mean"] == pytest.approx(0.83)
    assert result["std"] == pytest.approx(np.std([0.80, 0.82, 0.87], ddof=1))
    assert result["ci95"] == pytest.approx(4.302653 * result["std"] / np.sqrt(3), rel=1e-6)
    assert aggregate([0.5]) == {"n": 1, "mean": 0.5, "std": None, "ci95": None}


def fake_run(
    run_id: str,
    config_id: str,
    strategy: str,
    seed: int,
    val: float,
    predictions: list[int],
    truth: list[int],
) -> dict:
    return {
        "run_id": run_id,
        "config_id": config_id,
        "strategy": strategy,
        "status": "completed",
        "seed": seed,
        "varied": {},
        "hyperparameters": {"learning_rate": 1e-4},
        "best_epoch": 1,
        "trainable_params": 10,
        "history": [
            {"epoch": 1, "train_loss": 0.1, "val_macro_f1": val, "val_loss": 1 - val, "val_accuracy": val}
        ],
        "test": {
            "accuracy": accuracy_score(truth, predictions),
            "macro_f1": f1_score(truth, predictions, average="macro"),
        },
        "test_predictions": predictions,
        "test_labels": truth,
        "dataset": {"num_labels": 2, "label_names": ["a", "b"]},
        "train_time_s": 1.0,
        "peak_memory_mb": 100.0,
    }


def test_the_best_setting_is_chosen_on_validation_never_on_test():
    truth = [0, 1] * 20
    perfect, half = truth, [0] * 40
    runs = [
        fake_run("a1", "lora-a", "lora", 0, val=0.9, predictions=half, truth=truth),  # best on validation
        fake_run("b1", "lora-b", "lora", 0, val=0.7, predictions=perfect, truth=truth),  # best on test
        fake_run("f1", "full-a", "full", 0, val=0.8, predictions=perfect, truth=truth),
    ]
    summary = summarize(runs, "val_macro_f1")
    assert [r["config_id"] for r in summary["rows"] if r["chosen"]] == ["lora-a", "full-a"]
    assert summarize(runs, "val_loss")["rows"][0]["chosen"]  # lower is better for a loss
    [comparison] = summary["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("lora", "full")
    assert comparison["accuracy"]["difference"] == pytest.approx(-0.5)


def test_the_summary_warns_when_peak_memory_mixes_measures():
    truth = [0, 1] * 5
    old = fake_run(
        "a1", "full-a", "full", 0, val=0.9, predictions=truth, truth=truth
    )  # no measure: an older record
    new = {
        **fake_run("b1", "lora-a", "lora", 0, val=0.8, predictions=truth, truth=truth),
        "peak_memory_measure": "rss_rise_during_run",
    }
    assert "rerun those runs with --force" in summarize([old, new], "val_macro_f1")["memory_note"]
    assert summarize([new], "val_macro_f1")["memory_note"] is None
    gpu = {**new, "run_id": "c1", "config_id": "lora-b", "peak_memory_measure": "cuda_max_allocated"}
    note = summarize([new, gpu], "val_macro_f1")["memory_note"]
    assert (
        "cuda_max_allocated, rss_rise_during_run" in note and "--force" not in note
    )  # nothing to rerun there
    assert "Peak memory mixes measures" in summary_markdown(summarize([old, new], "val_macro_f1"))


def test_paired_bootstrap_known_answers():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 400)
    # identical predictions: no difference at all
    same = paired_bootstrap(CLASSIFICATION, truth, [truth], [truth], ["a", "b", "c"], resamples=2000)
    assert same["accuracy"] == {"difference": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0, "per_run": [0.0]}
    # A always right, B always wrong: the difference is 1 in every resample, p at its floor
    wrong = (truth + 1) % 3
    clear = paired_bootstrap(CLASSIFICATION, truth, [truth], [wrong], ["a", "b", "c"], resamples=2000)
    assert clear["accuracy"]["difference"] == pytest.approx(1.0)
    assert clear["accuracy"]["p_value"] == pytest.approx(1 / 2001)
    # 12 examples only A gets right, 3 only B: the observed difference and macro-F1 match sklearn's,
    # the interval holds it, and p agrees with McNemar's test in order of magnitude
    a, b = truth.copy(), truth.copy()
    a[:3] = wrong[:3]
    b[3:15] = wrong[3:15]
    result = paired_bootstrap(CLASSIFICATION, truth, [a], [b], ["a", "b", "c"], resamples=5000)
    assert result["accuracy"]["difference"] == pytest.approx(9 / 400, abs=1e-6)
    assert result["macro_f1"]["difference"] == pytest.approx(
        f1_score(truth, a, average="macro") - f1_score(truth, b, average="macro"), abs=1e-5
    )
    assert result["accuracy"]["low"] < 9 / 400 < result["accuracy"]["high"]
    mcnemar = stats.binomtest(3, 15, 0.5).pvalue  # exact McNemar: 0.035
    assert 0.005 < result["accuracy"]["p_value"] < 0.06 and 0.01 < mcnemar < 0.06
    # two paired seeds that predict alike give the single seed's difference
    two = paired_bootstrap(CLASSIFICATION, truth, [a, a], [b, b], ["a", "b", "c"], resamples=5000)
    assert two["accuracy"]["difference"] == pytest.approx(result["accuracy"]["difference"], abs=1e-6)


def test_dry_run_builds_no_outputs(write_config, tmp_path, main_here):
    result = main_here("--config", write_config(strategies={"lora": {"rank_values": [2, 4]}}), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "lora rank=2" in result.stdout and "lora rank=4" in result.stdout
    assert not (tmp_path / "outputs").exists()


def test_a_nan_in_one_run_of_a_sweep_fails_only_that_run_and_a_rerun_retries_only_it(
    write_config, tmp_path, main_here
):
    # 1e30 makes the first update overflow the weights, so that run's loss is NaN by its second step
    config = write_config(
        ablation={"learning_rates": [1e-3, 1e30]},
        training={"num_epochs": 1, "seeds": [0, 1]},
        strategies={
            "lora": {"enabled": False},
            "bitfit": {"enabled": False},
            "prompt_tuning": {"enabled": False},
        },
    )
    result = main_here("--config", config)
    assert result.returncode == 1 and "2 run(s) failed" in result.stderr
    runs = results(tmp_path)
    failed = [r for r in runs if r["status"] == "failed"]
    assert {r["hyperparameters"]["learning_rate"] for r in failed} == {1e30} and len(failed) == 2
    for run in failed:
        assert run["error"].startswith(
            "TrainingFailed: training loss became nan or infinite at optimizer step"
        )
        assert "lower learning rate" in run["error"]
    completed = [r for r in runs if r["status"] == "completed"]
    assert len(completed) == 2 and {r["hyperparameters"]["learning_rate"] for r in completed} == {1e-3}
    summary = (tmp_path / "outputs" / "results" / "summary.md").read_text()
    assert "| full | 1.0e+30 | 2 (2 failed) |" in summary and "| full | 1.0e-03 | 2 |" in summary

    again = main_here("--config", config)
    assert again.returncode == 1 and "4 run(s) planned: 2 already completed" in again.stderr
    assert [r for r in results(tmp_path) if r["status"] == "completed"] == completed
