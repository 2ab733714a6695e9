"""What the runs say together: mean and spread over seeds, the best setting of each strategy (chosen on
validation), paired bootstrap tests between strategies, the diagnostics per configuration and the verdict."""

from __future__ import annotations

import functools

import numpy as np

from config import DataConfig, short_key
from records.results import upgrade
from schema.search import edge_of_range
from reporting.diagnostics import diagnose
from reporting.verdict import best_of, configuration_label, decide
from tasks import TASKS, Task
from records.shape import RunRecord

BOOTSTRAP_RESAMPLES = 5000
BOOTSTRAP_CHUNK = 1000  # resamples drawn at a time, which bounds memory on large test splits

COMPARISON_NOTE = (
    "Δ = A − B on the same test examples, averaged over runs paired by seed (and fold, few-shot draw); 95% interval "
    f"and p-value from a paired bootstrap over test examples ({BOOTSTRAP_RESAMPLES:,} resamples). They measure how "
    "much the difference depends on which test examples were drawn, not on the seed: read them beside the standard "
    "deviations above. Each p-value is for one comparison; among many, some fall below 0.05 by chance."
)


VARIANTS_TITLE = "Each variant against the first (same strategy, its chosen rate and other settings)"


def task_of(runs: list[RunRecord]) -> Task:
    """The task the records are about (the config's default task when there are none)."""
    return TASKS[runs[0]["task"]] if runs else TASKS[DataConfig.task]


def aggregate(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation and the half-width of a 95% t-interval for the mean."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = float(np.mean(values))
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = float(np.std(values, ddof=1))
    return {"n": n, "mean": mean, "std": std, "ci95": float(stats.t.ppf(0.975, n - 1) * std / n**0.5)}


def validation_score(run: dict, metric: str) -> float:
    """The selection metric at the run's best epoch (what early stopping kept)."""
    return next(h[metric] for h in run["history"] if h["epoch"] == run["best_epoch"])


def best_run(runs: list[RunRecord], metric: str, task: Task) -> RunRecord:
    """The run with the best validation score."""
    return best_of(runs, lambda run: validation_score(run, metric), metric, task)


def summarize(runs: list[RunRecord], metric: str, trials: list[RunRecord] = ()) -> dict:
    """One row per configuration (strategy + grid values + shots), the best configuration of each
    strategy chosen on the validation `metric`, and paired tests between the chosen ones; with a search, what
    each strategy's `trials` (their records) found. Records of any layout are read through
    records.results.upgrade."""
    runs = [upgrade(run) for run in runs]
    task = task_of(runs)
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run["config_id"], []).append(run)
    rows = [configuration_row(config_id, group, metric, task) for config_id, group in groups.items()]
    chosen = {}
    for row in rows:
        if row["validation"]["mean"] is None:
            continue
        slot = (row["strategy"], row["shots_per_class"])
        if slot not in chosen or task.is_better(
            metric, row["validation"]["mean"], chosen[slot]["validation"]["mean"]
        ):
            chosen[slot] = row
    for row in chosen.values():
        row["chosen"] = True
        row["test_interval"] = test_interval(groups[row["config_id"]], task)
    sizes = next((r["dataset"].get("sizes", {}) for r in runs if r["status"] == "completed"), {})
    summary = {
        "task": task.name,
        "metric": metric,
        "rows": rows,
        "comparisons": slot_comparisons(chosen, groups, task),
        "variant_comparisons": variant_comparisons(rows, chosen, groups, task),
        "diagnostics": diagnostic_rows(groups, task),
        "memory_note": memory_note(runs),
        "folds": folds_of_runs(runs),
        "validation_examples": selection_examples(runs),
        "test_examples": sizes.get("test"),
        "search": search_summary([upgrade(t) for t in trials], metric, task),
    }
    return {**summary, "verdict": decide(summary)}


def configuration_row(config_id: str, group: list[RunRecord], metric: str, task: Task) -> dict:
    """A configuration's row: what it is, how many of its runs completed, and the mean (with spread) of each
    score and cost over them."""
    done = [r for r in group if r["status"] == "completed"]
    first = group[0]
    return {
        "config_id": config_id,
        "strategy": first["strategy"],
        "varied": first["varied"],
        "shots_per_class": (first["few_shot"] or {}).get("shots_per_class"),
        "learning_rate": first["hyperparameters"]["learning_rate"],
        "runs": len(group),
        "failed": len(group) - len(done),
        "validation": aggregate([validation_score(r, metric) for r in done]),
        # records made before a metric existed lack it: the mean is over those that have it
        "test": {
            m.name: aggregate([r["test"][m.name] for r in done if m.name in r["test"]]) for m in task.metrics
        },
        # a test split the data gave, scored whole: the same metrics on its rows no earlier split holds
        "test_unseen": (
            {
                m.name: aggregate([r["test_unseen"][m.name] for r in done if m.name in r["test_unseen"]])
                for m in task.metrics
            }
            if all(r.get("test_unseen") for r in done) and done
            else None
        ),
        # with training.calibration: the expected calibration error on test before and after it
        "calibration": (
            {
                "ece_uncalibrated": aggregate([r["test_uncalibrated"]["ece"] for r in done]),
                "ece": aggregate([r["test"]["ece"] for r in done]),
                "temperature": aggregate([r["calibration"]["temperature"] for r in done]),
            }
            if done and all(r.get("calibration") for r in done)
            else None
        ),
        "trainable_params": first.get("trainable_params"),
        "export_refused": first.get("export_refused"),  # a failed run has none
        "train_time_s": aggregate([r["train_time_s"] for r in done]),
        "peak_memory_mb": aggregate([r["peak_memory_mb"] for r in done]),
        # the costs the verdict decides on: counted, so that the machine's load cannot move them
        "train_flops": aggregate([r["costs"]["train_flops"] for r in done if r.get("costs")]),
        "memory_mb": aggregate([m for m in map(deciding_memory, done) if m is not None]),
        "chosen": False,
    }


def slot_comparisons(
    chosen: dict[tuple, RunRecord], groups: dict[str, list[RunRecord]], task: Task
) -> list[dict]:
    """The paired test between each two strategies chosen for the same amount of training data."""
    slots, comparisons = list(chosen), []
    for i, (strategy_a, shots) in enumerate(slots):
        for strategy_b, shots_b in slots[i + 1 :]:
            if shots_b != shots:
                continue
            comparison = compare_configurations(
                groups[chosen[strategy_a, shots]["config_id"]],
                groups[chosen[strategy_b, shots]["config_id"]],
                task,
            )
            if comparison:
                comparisons.append({"a": strategy_a, "b": strategy_b, "shots_per_class": shots, **comparison})
    return comparisons


def folds_of_runs(runs: list[RunRecord]) -> dict | None:
    """With cross-validation: {folds, repeats} (data.folds, data.fold_repeats); None with one validation split."""
    cut = [r["fold"] for r in runs if r.get("fold")]
    return {"folds": cut[0]["folds"], "repeats": max(f["repeat"] for f in cut) + 1} if cut else None


def selection_examples(runs: list[RunRecord]) -> int | None:
    """The validation examples a configuration was chosen on: its split's, or every fold's (of one repeat)."""
    done = [r for r in runs if r["status"] == "completed"]
    per_fold = {
        r["fold"]["index"]: r["dataset"]["sizes"].get("validation")
        for r in done
        if r.get("fold") and r["fold"]["repeat"] == 0
    }
    if per_fold:
        return sum(n or 0 for n in per_fold.values())
    return done[0]["dataset"].get("sizes", {}).get("validation") if done else None


def search_summary(trials: list[RunRecord], metric: str, task: Task) -> list[dict]:
    """Per searched strategy: its space, how its trials ended, the best setting on validation, the searched
    keys whose best value sits at the edge of its range, and the training seconds the search spent. A
    confirmation that reused its trial (same run id) stands for that trial."""
    own = [t for t in trials if not t["trial"].get("confirms") or t["trial"]["confirms"] == t["run_id"]]
    studies: dict[str, list[RunRecord]] = {}
    for record in own:
        studies.setdefault(record["trial"]["study"], []).append(record)
    found = []
    for study, records in studies.items():
        records = sorted(records, key=lambda r: r["trial"]["number"])
        space = records[0]["trial"]["space"]
        done = [r for r in records if r["status"] == "completed"]
        best = best_of(done, lambda r: r["best_metric"], metric, task) if done else None
        settings = {key: best["varied"][short_key(key)] for key in space} if best else {}
        found.append(
            {
                "strategy": records[0]["strategy"],
                "study": study,
                "space": space,
                "trials": len(records),
                "completed": len(done),
                "pruned": sum(r["status"] == "pruned" for r in records),
                "failed": sum(r["status"] == "failed" for r in records),
                "train_time_s": round(sum(r.get("train_time_s") or 0 for r in records), 2),
                "best": {
                    "settings": settings,
                    "validation": best["best_metric"],
                    "trial": best["trial"]["number"],
                }
                if best
                else None,
                "at_edge": {
                    key: edge for key, value in settings.items() if (edge := edge_of_range(value, space[key]))
                },
                "trial_rows": [
                    {
                        "trial": r["trial"]["number"],
                        "settings": {k: r["varied"].get(short_key(k)) for k in space},
                        "status": r["status"],
                        "validation": r.get("best_metric"),
                        "pruned_at": r.get("pruned_at"),
                        "train_time_s": r.get("train_time_s"),
                    }
                    for r in records
                ],
            }
        )
    return found


def test_interval(runs: list[RunRecord], task: Task) -> dict | None:
    """The bootstrap interval of a configuration's test scores (None for records without test predictions)."""
    done = [r for r in runs if r["status"] == "completed" and "test_labels" in r]
    if not done:
        return None
    done = [r for r in done if r["test_labels"] == done[0]["test_labels"]]
    return score_interval(
        task, done[0]["test_labels"], [r["test_predictions"] for r in done], done[0]["dataset"]["label_names"]
    )


def variant_comparisons(
    rows: list[dict], chosen: dict, groups: dict[str, list[RunRecord]], task: Task
) -> list[dict]:
    """Within each strategy, every variant against the first one in the config (the reference, e.g. `plain`),
    the other grid values held at the strategy's chosen ones: paired like the comparisons between strategies."""
    comparisons = []
    for (strategy, shots), best in chosen.items():
        held = {k: v for k, v in best["varied"].items() if k != "variant"}
        peers = [
            r
            for r in rows
            if r["strategy"] == strategy
            and r["shots_per_class"] == shots
            and "variant" in r["varied"]
            and {k: v for k, v in r["varied"].items() if k != "variant"} == held
            and r["validation"]["mean"] is not None
        ]
        for row in peers[1:]:
            comparison = compare_configurations(groups[row["config_id"]], groups[peers[0]["config_id"]], task)
            if comparison:
                comparisons.append(
                    {
                        "a": f"{strategy}: {row['varied']['variant']}",
                        "b": f"{strategy}: {peers[0]['varied']['variant']}",
                        "shots_per_class": shots,
                        **comparison,
                    }
                )
    return comparisons


def diagnostic_rows(groups: dict[str, list[RunRecord]], task: Task) -> list[dict]:
    """The diagnostics of each configuration's runs, one row per kind: in how many runs it was found, the
    first such run's message and the next step. Records made before diagnostics existed are diagnosed here."""
    rows = []
    for config_id, group in groups.items():
        done = [r for r in group if r["status"] == "completed"]
        found: dict[str, list[RunRecord]] = {}
        for run in done:
            for item in run["diagnostics"] if "diagnostics" in run else diagnose(run, task):
                found.setdefault(item["kind"], []).append(item)
        for kind, items in found.items():
            rows.append(
                {
                    "config_id": config_id,
                    "configuration": configuration_label(
                        {"strategy": group[0]["strategy"], "varied": group[0]["varied"]}
                    ),
                    "kind": kind,
                    "runs": len(items),
                    "of": len(done),
                    "message": items[0]["message"],
                    "next_step": items[0]["next_step"],
                }
            )
    return rows


def deciding_memory(run: dict) -> float | None:
    """The memory a run's cost is judged on: the CUDA allocator's peak (the same on every run of the same
    config), else the memory computed from its model and a step (None for records made before it)."""
    if run["peak_memory_measure"] == "cuda_max_allocated":
        return run["peak_memory_mb"]
    return (run.get("costs") or {}).get("computed_memory_mb")


def memory_note(runs: list[RunRecord]) -> str | None:
    """A warning when the peak memory column mixes measures: records from before per-run measurement on a
    CPU hold the process's lifetime peak, which is not comparable with a run's own rise."""
    measures = sorted({r["peak_memory_measure"] for r in runs if r["status"] == "completed"})
    if len(measures) < 2:
        return None
    note = f"Peak memory mixes measures ({', '.join(measures)}), which do not compare"
    if "process_peak_rss" in measures:
        note += (
            "; process_peak_rss is the process's lifetime peak, recorded before runs measured their own memory: "
            "rerun those runs with --force to compare memory"
        )
    return note + "."


def _pairing_key(run: dict) -> tuple:
    fold = run.get("fold") or {}
    return run["seed"], (run["few_shot"] or {}).get("draw"), fold.get("repeat"), fold.get("index")


def compare_configurations(runs_a: list[RunRecord], runs_b: list[RunRecord], task: Task) -> dict | None:
    """Paired bootstrap over test examples, pairing runs of the same seed (and fold, few-shot draw)."""
    by_key = {_pairing_key(r): r for r in runs_b if r["status"] == "completed" and "test_labels" in r}
    pairs = [
        (r, by_key[_pairing_key(r)])
        for r in runs_a
        if r["status"] == "completed"
        and "test_labels" in r
        and _pairing_key(r) in by_key
        and r["test_labels"] == by_key[_pairing_key(r)]["test_labels"]
    ]
    if not pairs:
        return None
    truth = pairs[0][0]["test_labels"]  # as the task reads them: class ids, numbers, or tags per token
    result = paired_bootstrap(
        task,
        truth,
        [a["test_predictions"] for a, _ in pairs],
        [b["test_predictions"] for _, b in pairs],
        pairs[0][0]["dataset"]["label_names"],
    )
    return {"paired_runs": len(pairs), **result}


@functools.lru_cache(maxsize=2)
def resample_weights(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """How often each of n test examples is drawn, one row per weighting: the observed data first (all ones),
    then each bootstrap resample. Kept for the next call: every comparison and interval of a summary resamples
    the same test split (drawing them takes about a second for 3,000 examples), so the array is read-only."""
    rng = np.random.default_rng(seed)
    sizes = [BOOTSTRAP_CHUNK] * (resamples // BOOTSTRAP_CHUNK) + (
        [resamples % BOOTSTRAP_CHUNK] if resamples % BOOTSTRAP_CHUNK else []
    )
    weights = np.concatenate(
        [np.ones((1, n), dtype=np.float32)]
        + [rng.multinomial(n, np.full(n, 1 / n), size=size).astype(np.float32) for size in sizes]
    )
    weights.setflags(write=False)
    return weights


def weighted_scores(
    task: Task, truth: np.ndarray, predictions: list, label_names: list[str], weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Each compared metric of each prediction set (rows) under each weighting of the test examples (columns),
    from the examples' statistics (task.example_statistics), so a resample costs one matrix product."""
    counts = weights.sum(1)
    per_run = [
        task.metrics_from_sums(weights @ task.example_statistics(truth, p, label_names), counts, label_names)
        for p in predictions
    ]
    return {name: np.stack([scores[name] for scores in per_run]) for name in task.compared_metrics}


def paired_bootstrap(
    task: Task,
    truth,
    predictions_a: list,
    predictions_b: list,
    label_names: list[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, dict]:
    """Difference A - B in each of the task's compared metrics (mean over paired runs), its 95% percentile
    interval, a two-sided p-value for "no difference" (the bootstrap distribution shifted to zero mean, as in
    Berg-Kirkpatrick et al. 2012), and the difference in each pair of runs. Test examples are resampled, the
    same ones for both sides, so the test sees the pairing."""
    weights = resample_weights(len(truth), resamples)
    a = weighted_scores(task, truth, predictions_a, label_names, weights)
    b = weighted_scores(task, truth, predictions_b, label_names, weights)
    result = {}
    for name in task.compared_metrics:
        difference = a[name].mean(0) - b[name].mean(0)
        observed, resampled = float(difference[0]), difference[1:]
        extreme = np.sum(np.abs(resampled - resampled.mean()) >= abs(observed) - 1e-12)
        low, high = np.percentile(resampled, [2.5, 97.5])
        result[name] = {
            "difference": observed,
            "low": float(low),
            "high": float(high),
            "p_value": float((extreme + 1) / (len(resampled) + 1)),
            "per_run": [float(d) for d in a[name][:, 0] - b[name][:, 0]],
        }
    return result


def score_interval(
    task: Task,
    truth,
    predictions: list,
    label_names: list[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, dict[str, float]]:
    """The 95% percentile interval of each compared metric (mean over the runs) over resampled test examples:
    how far the score could move with another test split drawn from the same data."""
    scores = weighted_scores(task, truth, predictions, label_names, resample_weights(len(truth), resamples))
    intervals = {}
    for name, values in scores.items():
        low, high = np.percentile(values.mean(0)[1:], [2.5, 97.5])
        intervals[name] = {"low": float(low), "high": float(high)}
    return intervals
