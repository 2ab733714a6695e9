"""The verdict on constructed results: a clear winner, a tie with a cheaper strategy, too little data, and the
cases where the evidence disagrees with itself. Each experiment has three seeds unless a test says otherwise."""

import csv
import json

import numpy as np
import pytest

from serving.predict import find_run
from reporting.summary import summarize
from reporting.tables import summary_markdown, terminal_summary, write_summary
from tasks import TASKS
from utils import atomic_write_json
from reporting.verdict import describe, describe_costs, standing

TASK = TASKS["classification"]
LABELS = ["billing", "shipping", "account"]


def run(
    strategy: str,
    seed: int,
    val: float,
    error_rate: float,
    test_size: int = 600,
    params: int = 1_000_000,
    flops: float = 1e13,
    memory_mb: float = 1000.0,
    error_seed: int | None = None,
    varied: dict | None = None,
    time_s: float = 100.0,
) -> dict:
    """A completed run whose test predictions are wrong on `error_rate` of the examples (which ones: drawn
    from the strategy and seed, so two strategies' errors are independent)."""
    truth = np.arange(test_size) % 3
    rng = np.random.default_rng(error_seed if error_seed is not None else [seed, *strategy.encode()])
    wrong = rng.choice(test_size, int(round(error_rate * test_size)), replace=False)
    predictions = truth.copy()
    predictions[wrong] = (truth[wrong] + 1) % 3
    logits = np.log(np.full((test_size, 3), 0.1))
    logits[np.arange(test_size), predictions] = np.log(0.8)
    config_id = strategy + "".join(f"-{k}={v}" for k, v in (varied or {}).items())
    return {
        "run_id": f"{config_id}-{seed}",
        "config_id": config_id,
        "strategy": strategy,
        "status": "completed",
        "seed": seed,
        "varied": varied or {},
        "hyperparameters": {"learning_rate": 1e-4},
        "best_epoch": 1,
        "history": [{"epoch": 1, "train_loss": 0.1, "val_loss": 0.2, "val_macro_f1": val}],
        "test": TASK.test_report(truth.tolist(), logits, LABELS),
        "test_predictions": predictions.tolist(),
        "test_labels": truth.tolist(),
        "trainable_params": params,
        "train_time_s": time_s,
        "peak_memory_mb": 500.0,
        "peak_memory_measure": "rss_rise_during_run",
        "costs": {"train_flops": flops, "computed_memory_mb": memory_mb},
        "dataset": {
            "name": "tickets",
            "num_labels": 3,
            "label_names": LABELS,
            "sizes": {"train": 3000, "validation": 400, "test": test_size},
        },
    }


def verdict_of(runs: list[dict]) -> tuple[dict, list[str]]:
    summary = summarize(runs, "val_macro_f1")
    return summary["verdict"], describe(summary["verdict"], TASK)


def statuses(verdict: dict) -> dict[str, str]:
    return {s["strategy"]: s["status"] for s in verdict["standings"]}


SEEDS = (0, 1, 2)


def test_a_clear_winner_is_recommended_and_the_rest_are_behind():
    runs = [run("full", s, val=0.95, error_rate=0.05) for s in SEEDS]
    runs += [run("lora", s, val=0.85, error_rate=0.20, params=10_000, memory_mb=400) for s in SEEDS]
    runs += [run("bitfit", s, val=0.80, error_rate=0.25, params=5_000, memory_mb=300) for s in SEEDS]
    verdict, lines = verdict_of(runs)
    assert verdict["kind"] == "decided" and verdict["recommended"] == "full"
    assert statuses(verdict) == {"lora": "behind", "bitfit": "behind"}
    assert lines[0].startswith("Use full: it is the best on validation macro-F1 0.9500")
    assert "every other strategy is clearly behind it on test macro-F1" in lines[0]
    assert lines[1].startswith("full: validation macro-F1 0.9500, test macro-F1 0.9500 (95% interval 0.93")
    assert "± 0.0000 over 3 seeds" in lines[1]
    assert any(line.startswith("Clearly behind full: lora (Δ -0.15") for line in lines)
    assert not any(
        "one seed" in line or "larger test split" in line for line in lines
    )  # the evidence suffices


def test_a_tie_recommends_the_cheaper_strategy_with_its_costs():
    runs = [run("full", s, val=0.93, error_rate=0.08) for s in SEEDS]
    runs += [
        run("lora", s, val=0.92, error_rate=0.08, params=3_300, flops=8e12, memory_mb=500) for s in SEEDS
    ]
    runs += [
        run("bitfit", s, val=0.90, error_rate=0.20, params=1_000, flops=6e12, memory_mb=300) for s in SEEDS
    ]
    verdict, lines = verdict_of(runs)
    assert verdict["kind"] == "decided" and verdict["winner"]["strategy"] == "full"
    assert statuses(verdict) == {"lora": "within noise", "bitfit": "behind"}
    assert verdict["recommended"] == "lora"  # bitfit is cheaper still, but clearly behind
    assert lines[0].startswith(
        "Use lora: it is within noise of full, the best on validation, on test macro-F1 (Δ "
    )
    assert lines[0].endswith(
        "with 0.33% of its trainable parameters, 0.80× its training compute and 0.50× its memory."
    )
    assert verdict["resolution"] < 0.05


def test_a_tie_without_a_cheaper_strategy_keeps_the_winner():
    runs = [run("full", s, val=0.93, error_rate=0.08) for s in SEEDS]
    # fewer parameters, but twice the compute: not cheaper on every measure
    runs += [run("prompt_tuning", s, val=0.92, error_rate=0.08, params=9_000, flops=2e13) for s in SEEDS]
    # the same costs, within the tolerance: nothing to gain
    runs += [
        run("partial_freezing", s, val=0.91, error_rate=0.08, flops=1.05e13, memory_mb=950) for s in SEEDS
    ]
    verdict, lines = verdict_of(runs)
    assert verdict["recommended"] == "full"
    assert lines[0] == (
        "Use full: it is the best on validation macro-F1 0.9300; prompt_tuning, partial_freezing are "
        "within noise of it on test macro-F1, but none costs less on every measure."
    )
    assert "2.00× its training compute" in lines[2]


def test_too_little_data_says_so_and_what_to_run():
    runs = [run("full", s, val=0.90, error_rate=0.20, test_size=30) for s in SEEDS]
    runs += [
        run("lora", s, val=0.85, error_rate=0.30, test_size=30, params=3_000, memory_mb=500) for s in SEEDS
    ]
    runs += [
        run("bitfit", s, val=0.80, error_rate=0.25, test_size=30, params=1_000, memory_mb=300) for s in SEEDS
    ]
    verdict, lines = verdict_of(runs)
    assert verdict["kind"] == "undecided"
    assert set(statuses(verdict).values()) == {"within noise"}
    assert lines[0].startswith(
        "These results cannot tell the strategies apart yet: every difference from full"
    )
    assert lines[1].startswith(
        "If you must choose now, bitfit costs least among them, with 0.10% of full's trainable"
    )
    assert any(
        "On this test split (30 examples) the 95% intervals are about ±0.1" in line
        and "larger test split" in line
        for line in lines
    )


def test_one_seed_and_a_validation_tie_are_named_as_thin_evidence():
    runs = [
        run("full", 0, val=0.95, error_rate=0.05),
        run("lora", 0, val=0.95, error_rate=0.25, params=3_000),
    ]
    verdict, lines = verdict_of(runs)
    assert verdict["winner"]["strategy"] == "full" and verdict["validation_ties"] == ["lora"]
    assert any(
        line.startswith("full, lora tie on validation (0.9500); full is the reference") for line in lines
    )
    assert any("ran with one seed" in line and "training.seeds: [0, 1, 2]" in line for line in lines)


def test_test_scores_never_choose_but_a_disagreement_is_reported():
    # lora is far better on test, in every seed, but worse on validation: full stays the reference
    runs = [run("full", s, val=0.95, error_rate=0.30) for s in SEEDS]
    runs += [run("lora", s, val=0.90, error_rate=0.05, params=3_000) for s in SEEDS]
    verdict, lines = verdict_of(runs)
    assert verdict["winner"]["strategy"] == "full" and statuses(verdict) == {"lora": "ahead"}
    assert (
        lines[0]
        == "Use full: it is the best on validation macro-F1 0.9500, though lora scores higher on test "
        "macro-F1 (below)."
    )
    assert any(
        line.startswith("lora scored higher than full on test macro-F1") and "(400 examples)" in line
        for line in lines
    )


def test_a_separation_that_flips_in_one_seed_counts_as_noise():
    # pooled over three seeds lora is behind, but in seed 2 it is ahead: another seed could reverse the order
    runs = [
        run("full", s, val=0.95, error_rate=e, error_seed=10 + s) for s, e in zip(SEEDS, (0.05, 0.05, 0.20))
    ]
    runs += [
        run("lora", s, val=0.90, error_rate=e, error_seed=20 + s) for s, e in zip(SEEDS, (0.25, 0.25, 0.10))
    ]
    verdict, lines = verdict_of(runs)
    [standing] = verdict["standings"]
    assert standing["test"]["high"] < 0  # separated on the pooled test split ...
    assert standing["status"] == "within noise" and standing["seed_dependent"]  # ... but not in every seed
    assert "separated on the pooled test split but not in every seed" in lines[2]


def test_a_strategy_that_never_completed_is_named_and_a_single_one_is_not_compared():
    failed = {**run("lora", 0, val=0.9, error_rate=0.1), "status": "failed", "error": "out of memory"}
    verdict, lines = verdict_of([run("full", 0, val=0.95, error_rate=0.05), failed])
    assert verdict["kind"] == "single" and verdict["not_compared"] == ["lora"]
    assert lines[0].startswith(
        "Only full completed, so there is nothing to compare it with: test macro-F1 0.9500"
    )
    assert "Not compared: lora" in lines[1]
    assert not any("one seed" in line for line in lines)  # nothing is compared, so no seed advice


@pytest.mark.parametrize("everything", [True, False])
def test_the_summary_opens_with_the_verdict_and_compares_with_the_winner(everything, tmp_path):
    runs = [
        run(s, seed, val=v, error_rate=e, params=p)
        for s, v, e, p in [
            ("full", 0.95, 0.05, 10**6),
            ("lora", 0.94, 0.06, 3_000),
            ("bitfit", 0.80, 0.25, 1_000),
        ]
        for seed in SEEDS
    ]
    summary = summarize(runs, "val_macro_f1")
    text = summary_markdown(summary, everything=everything)
    assert text.splitlines()[:3] == ["## Verdict", "", "**" + describe(summary["verdict"], TASK)[0] + "**"]
    assert "## Against full, the best on validation" in text
    assert "| lora | within noise |" in text and "| bitfit | behind |" in text
    assert (
        "## Every pair of chosen settings" in text
    ) == everything  # the terminal leaves the matrix to the files
    if not everything:
        short = terminal_summary(summary, tmp_path)
        assert "adds all 3 pairs of strategies" in short and str(tmp_path / "summary.md") in short
        assert short.endswith("(or export --run recommended --out DIR)")
        for record in runs:  # a recommended run whose head export cannot write is not offered for export
            record["export_refused"] = "its model.head (mlp) is not part of any Hugging Face model class"
        short = terminal_summary(summarize(runs, "val_macro_f1"), tmp_path)
        assert short.endswith("(export refuses it: its head is in no Hugging Face model class)")
        return
    write_summary(summary, tmp_path)
    saved = json.loads((tmp_path / "verdict.json").read_text())
    assert saved["recommended"] == "lora" and saved["sentences"] == describe(summary["verdict"], TASK)
    with open(tmp_path / "winner_comparisons.csv") as f:
        rows = {row["strategy"]: row for row in csv.DictReader(f)}
    assert rows["lora"]["status"] == "within noise" and float(rows["lora"]["params_ratio"]) == pytest.approx(
        0.003
    )
    assert rows["bitfit"]["status"] == "behind" and float(rows["bitfit"]["high"]) < 0


def test_predict_and_export_find_the_recommended_run_as_well_as_the_best(tmp_path):
    runs = [run("full", s, val=0.93 + s / 1000, error_rate=0.08) for s in SEEDS]
    runs += [run("lora", s, val=0.92 - s / 1000, error_rate=0.08, params=3_300, memory_mb=500) for s in SEEDS]
    results = tmp_path / "results"
    atomic_write_json(results / "all_results.json", {"runs": runs})
    atomic_write_json(
        results / "experiment.json",
        {
            "run_ids": [r["run_id"] for r in runs],
            "config": {"training": {"early_stopping": {"metric": "val_macro_f1"}}},
        },
    )
    # each the run of its strategy that is best on validation
    assert find_run("best", tmp_path) == tmp_path / "checkpoints" / "full" / "full-2"
    assert find_run("recommended", tmp_path) == tmp_path / "checkpoints" / "lora" / "lora-0"


def test_the_verdict_names_the_chosen_setting_when_a_strategy_had_several():
    runs = [
        run("full", s, val=0.90, error_rate=0.05, varied={"learning_rate": rate})
        for s in SEEDS
        for rate in (1e-4, 3e-5)
    ]
    # seed 0 at 3e-5: that rate has the better mean on validation
    runs[1]["history"][0]["val_macro_f1"] = 0.95
    runs += [run("lora", s, val=0.85, error_rate=0.20, varied={"learning_rate": 1e-3}) for s in SEEDS]
    verdict, lines = verdict_of(runs)
    assert lines[0].startswith("Use full (learning_rate=3e-05): it is the best on validation macro-F1 0.9167")
    assert any(
        line.startswith("Clearly behind full (learning_rate=3e-05): lora (learning_rate=0.001) (Δ")
        for line in lines
    )


def test_separated_needs_the_interval_and_the_p_value_and_every_seed():
    behind = {"difference": -0.03, "low": -0.07, "high": -0.003, "p_value": 0.01, "per_run": [-0.03]}
    assert standing(behind, higher_is_better=True) == ("behind", False)
    assert standing({**behind, "p_value": 0.075}, True) == (
        "within noise",
        False,
    )  # the interval alone is not enough
    assert standing({**behind, "per_run": [-0.05, 0.01]}, True) == ("within noise", True)
    assert standing({**behind, "high": 0.001}, True) == ("within noise", False)
    # for a metric where lower is better (an error), the same numbers mean ahead
    assert standing(behind, higher_is_better=False) == ("ahead", False)


def test_costs_read_as_shares_below_ten_times_and_as_multiples_above():
    assert (
        describe_costs({"params": 0.0033, "compute": 0.93, "memory": None})
        == "0.33% of its trainable parameters and 0.93× its training compute"
    )
    assert (
        describe_costs({"params": 300.25, "compute": None, "memory": 3.04})
        == "300× its trainable parameters and 3.04× its memory"
    )


def test_the_measured_time_and_resident_memory_never_move_the_verdict():
    """A busy machine slows one strategy's clock and swells its resident memory: the counted costs decide, so
    the recommendation, the standings and the cost ratios stay exactly as on a quiet machine."""
    quiet = [run("full", s, val=0.93, error_rate=0.08) for s in SEEDS]
    quiet += [
        run("bitfit", s, val=0.92, error_rate=0.08, params=1_000, flops=6e12, memory_mb=400) for s in SEEDS
    ]
    busy = [dict(r) for r in quiet]
    for r in busy:
        if r["strategy"] == "bitfit":
            r.update(train_time_s=r["train_time_s"] * 5.81, peak_memory_mb=r["peak_memory_mb"] * 9)
    (calm, calm_lines), (loaded, loaded_lines) = verdict_of(quiet), verdict_of(busy)
    assert calm["recommended"] == loaded["recommended"] == "bitfit"
    assert calm["standings"] == loaded["standings"] and calm_lines[0] == loaded_lines[0]
    assert calm["standings"][0]["costs"] == {"params": 0.001, "compute": 0.6, "memory": 0.4}
