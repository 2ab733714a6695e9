"""The pruned search (search.method: optuna): its config checks, trials as validated runs, pruning and failures,
confirmation, caching, recovery from a killed worker, and two workers on one study."""

import json
import logging
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest

import experiment.one_run
import experiment.pruning
import experiment.search
import experiment.search_workers
import main
import visualize
from config import load_config
from conftest import ROOT
from records.results import read_results, results_file
from schema.search import edge_of_range
from strategies import STRATEGIES
from trainer import TrainingFailed
from utils import ConfigError


def search_config(write_config, **search):
    return write_config(search={"method": "optuna", "trials": 3, **search}, training={"num_epochs": 2})


def records(tmp_path) -> list[dict]:
    return read_results(results_file(tmp_path / "outputs"))


def own_trials(runs: list[dict]) -> dict[tuple[str, int], dict]:
    """Each trial's record by (study, number): a confirmation that reused its trial's run stands for it."""
    return {
        (r["trial"]["study"], r["trial"]["number"]): r
        for r in runs
        if r["trial"] and r["trial"].get("confirms") in (None, r["run_id"])
    }


def journal(tmp_path):
    return experiment.search_workers.study_journal(tmp_path / "outputs" / "search")


@pytest.mark.parametrize(
    "search, message",
    [
        (
            {"space": {"strategies.lora.rnak": [4, 8]}},
            "search.space.strategies.lora.rnak: unknown key 'strategies.lora.rnak'; did you mean 'strategies.lora.rank'?",
        ),
        (
            {"space": {"strategies.lora.rank": {"low": 8, "high": 4}}},
            "search.space.strategies.lora.rank: got {'high': 4, 'low': 8}, allowed: {low: number, high: number above low",
        ),
        (
            {"space": {"training.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}},
            "search.space.training.learning_rate: cannot be searched (each strategy searches its own rate",
        ),
        (
            {"space": {"strategies.lora.rank": [0, 4]}},
            "search.space.strategies.lora.rank: strategies.lora.rank: got 0",
        ),
        ({"pruner": "hyperband"}, "search.pruner: expected one of 'none', 'median', 'successive_halving'"),
    ],
)
def test_a_mistake_in_the_search_fails_before_anything_runs(write_config, tmp_path, capsys, search, message):
    config = write_config(search={"method": "optuna", **search})
    with pytest.raises(ConfigError, match=None) as err:
        load_config(config)
    assert message in str(err.value)
    assert main.main(["--config", str(config)]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "outputs").exists()


def test_a_search_does_not_mix_with_the_grid(write_config):
    config = write_config(search={"method": "optuna"}, sweep={"training.batch_size": [4, 8]})
    with pytest.raises(
        ConfigError,
        match="sweep: set with search.method: optuna, which chooses each strategy's "
        "settings itself; put the keys it varies in search.space",
    ):
        load_config(config)
    with pytest.raises(ConfigError, match="search.space: set with search.method: grid, which ignores it"):
        load_config(write_config(search={"space": {"strategies.lora.rank": [4, 8]}}))


def test_every_strategy_declares_a_rate_range_that_a_run_accepts(write_config):
    cfg = load_config(write_config())
    for name, strategy in STRATEGIES.items():
        rate = strategy.space["learning_rate"]
        assert 0 < rate["low"] < rate["high"] and rate["log"], name
    # full fine-tuning's rates sit far below the adapters'
    assert (
        STRATEGIES["full"].space["learning_rate"]["high"]
        < STRATEGIES["prompt_tuning"].space["learning_rate"]["low"]
    )
    assert experiment.search.searched_space(cfg, "lora") == {
        "strategies.lora.learning_rate": STRATEGIES["lora"].space["learning_rate"]
    }


def test_trials_are_validated_runs_and_the_verdict_compares_their_confirmations(
    write_config, tmp_path, monkeypatch
):
    # rates at which the tiny model learns in two epochs, so that the trials differ
    config = write_config(
        search={
            "method": "optuna",
            "trials": 3,
            "confirm_seeds": [42, 7],
            "space": {
                "strategies.bitfit.learning_rate": {"low": 1e-2, "high": 1e-1, "log": True},
                "strategies.lora.learning_rate": {"low": 3e-3, "high": 3e-2, "log": True},
            },
        },
        training={"num_epochs": 2},
        strategies={"bitfit": {"learning_rate": 0.03}, "lora": {"learning_rate": 0.01}},
    )
    assert main.main(["--config", str(config), "--strategy", "bitfit", "--strategy", "lora"]) == 0
    runs = records(tmp_path)
    trials = own_trials(runs)
    assert sorted(number for _, number in trials) == [0, 0, 1, 1, 2, 2]  # three per strategy
    untested = [r for r in runs if r["trial"] and not r["trial"].get("confirms")]
    assert untested and all("test" not in r and "test_predictions" not in r for r in untested)
    # the first trial of each study is the config's own setting
    firsts = {r["strategy"]: r["varied"]["learning_rate"] for (_, number), r in trials.items() if number == 0}
    assert firsts == {"bitfit": 0.03, "lora": 0.01}
    confirmations = [r for r in runs if r["trial"] and r["trial"].get("confirms")]
    assert len(confirmations) == 4 and all("test" in r for r in confirmations)  # two strategies x two seeds
    for strategy in ("bitfit", "lora"):
        done = [r for r in trials.values() if r["strategy"] == strategy and r["status"] == "completed"]
        # ties: first
        best = max(sorted(done, key=lambda r: r["trial"]["number"]), key=lambda r: r["best_metric"])
        assert {r["trial"]["number"] for r in confirmations if r["strategy"] == strategy} == {
            best["trial"]["number"]
        }
    # seed 42 is the trials' own: its confirmation tested the trial's kept weights instead of training again
    reused = [r for r in confirmations if r["seed"] == 42]
    assert all(r["run_id"] == r["trial"]["confirms"] for r in reused)
    experiment_file = json.loads((tmp_path / "outputs" / "results" / "experiment.json").read_text())
    assert set(experiment_file["run_ids"]) == {r["run_id"] for r in confirmations}
    summary = (tmp_path / "outputs" / "results" / "summary.md").read_text()
    assert (
        "Each strategy's settings were searched on validation, then the best confirmed: bitfit over "
        "learning_rate 0.01..0.1 (log) (3 trials" in summary
    )
    checkpoints = tmp_path / "outputs" / "checkpoints"
    kept = {p.parent.name for p in checkpoints.glob("*/*/best.safetensors")}
    assert kept == {r["run_id"] for r in confirmations}  # the other trials' weights are gone

    assert visualize.main(["--output-dir", str(tmp_path / "outputs")]) == 0
    assert (tmp_path / "outputs" / "plots" / "search_progress.png").is_file()
    report = (tmp_path / "outputs" / "report.html").read_text()
    assert "The search: every trial of 2 strategies" in report and "<h3>lora</h3>" in report

    # a second run of the same experiment trains nothing: every trial and confirmation is cached
    monkeypatch.setattr(
        experiment.one_run, "fit_and_test", lambda *a, **k: pytest.fail("a run trained again")
    )
    assert main.main(["--config", str(config), "--strategy", "bitfit", "--strategy", "lora"]) == 0
    assert len(records(tmp_path)) == len(runs)


def test_the_first_draws_spread_over_the_range():
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"learning_rate": 5e-5})  # the config's own setting
    space = {"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
    quarters = []
    for claimed in range(experiment.search.STARTUP_TRIALS):
        study.sampler = experiment.search.sampler_for(claimed, sampler_seed=0)
        rate = study.ask(space).params["learning_rate"]
        quarters.append(int(math.log(rate / 1e-5) / math.log(100) * 4))  # its quarter of the log range
    # each in its own quarter; TPE's random draws, on banking77, fell at 0.67, 0.78 and 0.85 of the range
    assert len(set(quarters[1:])) == 3, quarters


def test_a_round_waits_at_the_rung_and_is_judged_there_on_validation_loss(write_config, tmp_path, caplog):
    # the config's own rate, the first trial, is far too high for the tiny model: judged alone as it arrived, it
    # would go on
    config = write_config(
        search={
            "method": "optuna",
            "trials": 4,
            "space": {"strategies.bitfit.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}},
        },
        training={"num_epochs": 2},
        strategies={"bitfit": {"learning_rate": 0.3}},
    )
    caplog.set_level(logging.INFO, logger="bertlab")
    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    trials = {number: r for (_, number), r in own_trials(records(tmp_path)).items()}
    # 14 steps: the first rung is judged at the evaluation after epoch 1 (step 7); one of four goes on
    assert sorted(r["status"] for r in trials.values()) == ["completed"] + ["pruned"] * 3
    assert trials[0]["status"] == "pruned"
    assert all(r["pruned_at"] == {"step": 7, "epoch": 1} for r in trials.values() if r["status"] == "pruned")
    at_rung = {number: r["history"][0]["val_loss"] for number, r in trials.items()}
    [going_on] = [number for number, r in trials.items() if r["status"] == "completed"]
    assert at_rung[going_on] == min(at_rung.values())
    assert f"going on: trial {going_on + 1}\n" in caplog.text  # numbered from 1 in the log
    storage = journal(tmp_path)
    [study] = optuna.get_all_study_summaries(storage)
    for trial in optuna.load_study(study_name=study.study_name, storage=storage).get_trials():
        # what the study was told: the best validation loss so far, negated as the study maximizes macro-F1
        history = trials[trial.number]["history"]
        assert trial.intermediate_values == {
            e["step"]: -min(h["val_loss"] for h in history[: i + 1]) for i, e in enumerate(history)
        }


def test_the_best_third_of_all_trials_at_a_rung_go_on_whichever_round_they_ran_in():
    study = optuna.create_study(direction="maximize")  # scores are validation losses, negated

    def kept(score, rung):
        return experiment.pruning.kept_at_rung(study.get_trials(), score, rung, maximizes=True)

    def reached(*reported, **attrs):  # trials and what they reported at each evaluation
        for values in reported:
            study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.PRUNED, intermediate_values=values, user_attrs=attrs
                )
            )

    # the first round: its best went on, evaluated at steps that miss the next rung
    reached({7: -0.5, 14: -0.45, 22: -0.42}, {7: -0.9}, {7: -1.0}, {7: -1.2})
    reached({7: -0.3}, {7: -0.35})  # left by a killed worker and run again (below): not counted
    reached({}, rerun_of=4)
    reached({}, rerun_of=5)
    reached({7: -0.6}, {7: -0.7}, {7: -1.5}, {7: -1.6})  # this round, all waiting at step 7
    # two of the eight go on; Optuna's pruner, judging best first against those judged before it, stopped -0.6
    # too (it had to beat -0.5)
    assert [s for s in (-0.6, -0.7, -1.5, -1.6) if kept(s, 7)] == [-0.6]
    # at the next rung, the first round's best counts with what it reported at step 22
    assert kept(-0.4, 21)
    assert not kept(-0.44, 21)


def test_pruned_and_failed_trials_are_recorded_and_never_chosen(write_config, tmp_path, monkeypatch):
    config = search_config(write_config, trials=4, pruner="median")
    real_fit = experiment.one_run.fit_and_test

    def fit_failing_trial_one(job, *args, **kwargs):
        if job.run.trial["number"] == 1 and not job.run.trial.get("confirms"):
            raise TrainingFailed("training loss became nan or infinite at optimizer step 3")
        return real_fit(job, *args, **kwargs)

    monkeypatch.setattr(experiment.one_run, "fit_and_test", fit_failing_trial_one)
    # trials 2 and 3 are pruned at their first evaluation, however well they do
    monkeypatch.setattr(optuna.pruners.MedianPruner, "prune", lambda self, study, trial: trial.number >= 2)
    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    runs = records(tmp_path)
    trials = {number: r for (_, number), r in own_trials(runs).items()}
    assert [trials[n]["status"] for n in range(4)] == ["completed", "failed", "pruned", "pruned"]
    assert trials[1]["error"].startswith("TrainingFailed: training loss became nan")
    for number in (2, 3):
        pruned = trials[number]
        assert pruned["pruned_at"] == {"step": 7, "epoch": 1} and len(pruned["history"]) == 1
        assert "test" not in pruned
    [confirmation] = [r for r in runs if r["trial"].get("confirms")]
    assert confirmation["trial"]["number"] == 0
    summary = (tmp_path / "outputs" / "results" / "summary.md").read_text()
    assert (
        "bitfit over learning_rate 0.0001..0.03 (log) (4 trials; 2 pruned, 1 failed): best learning_rate 0.001"
        in summary
    )


def test_a_trial_left_running_by_a_killed_worker_runs_again_and_counts_once(
    write_config, tmp_path, monkeypatch
):
    config = search_config(write_config, trials=2)

    def killed(*args, **kwargs):
        raise SystemExit("killed")  # nothing in the runner catches it: the trial stays running in the study

    monkeypatch.setattr(experiment.search, "run_one", killed)
    with pytest.raises(SystemExit):
        main.main(["--config", str(config), "--strategy", "bitfit"])
    storage = journal(tmp_path)
    [study] = optuna.get_all_study_summaries(storage)
    left = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    assert [t.state for t in left] == [optuna.trial.TrialState.RUNNING] * 2  # the round claimed both
    # their worker's process is gone (the number of one that has ended)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    for trial in left:
        storage.set_trial_user_attr(
            trial._trial_id, "worker", {**trial.user_attrs["worker"], "pid": int(gone.stdout)}
        )
    monkeypatch.undo()

    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    trials = optuna.load_study(study_name=study.study_name, storage=journal(tmp_path)).get_trials()
    left_behind = experiment.search_workers.left_by_stopped_workers(trials)
    counted = [t for t in trials if t.number not in left_behind]
    ended = {
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    }  # the round's worse may be pruned
    assert len(counted) == 2 and {t.state for t in counted} <= ended
    assert [(t.params, t.user_attrs["rerun_of"]) for t in counted] == [(t.params, t.number) for t in left]
    assert len(own_trials(records(tmp_path))) == 2


def test_a_running_trial_of_a_live_worker_is_left_alone(tmp_path):
    place = experiment.search_workers.StudyPlace(tmp_path, None)
    assert place.alive({"host": os.uname().nodename, "pid": os.getppid()}, "study", 3)
    assert not place.alive({"host": "elsewhere", "pid": 1}, "study", 3)  # no lease: silent
    place.lease_path("study", 3).parent.mkdir()
    place.lease_path("study", 3).touch()
    assert place.alive({"host": "elsewhere", "pid": 1}, "study", 3)


def test_two_workers_share_one_study_without_running_a_trial_twice(write_config, tmp_path):
    config = search_config(write_config, trials=4)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "main.py"),
                "--config",
                str(config),
                "--strategy",
                "bitfit",
                "--shard",
                f"{k}/2",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        for k in (0, 1)
    ]
    logs = [worker.communicate(timeout=300)[1] for worker in workers]
    # a shard may wait for another
    assert [worker.returncode for worker in workers] in ([0, 1], [1, 0], [0, 0]), logs
    started = [
        line.split("search bitfit: ")[1]
        for log in logs
        for line in log.splitlines()
        if "search bitfit: trial" in line
    ]
    assert len(started) == 4 and len(set(started)) == 4, started
    storage = journal(tmp_path)
    [study] = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    assert len(trials) == 4 and len({t.user_attrs["run_id"] for t in trials}) == 4
    assert {t.user_attrs["worker"]["pid"] for t in trials} <= {w.pid for w in workers}


def test_a_best_value_near_the_end_of_its_range_is_at_its_edge():
    rates = {"low": 1e-4, "high": 1e-2, "log": True}
    assert edge_of_range(1.1e-4, rates) == "low" and edge_of_range(9e-3, rates) == "high"
    assert edge_of_range(1e-3, rates) is None and edge_of_range(8, [4, 8]) is None
    assert edge_of_range(0.095, {"low": 0.0, "high": 0.1}) == "high"


def test_the_verdict_names_what_was_searched_and_a_best_rate_at_the_edge_of_its_range():
    from reporting.summary import search_summary
    from reporting.verdict import describe_search
    from tasks import TASKS

    space = {"strategies.lora.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}

    def trial(number, rate, status, score):
        return {
            "run_id": f"lora-{number}",
            "strategy": "lora",
            "status": status,
            "best_metric": score,
            "varied": {"learning_rate": rate},
            "train_time_s": 10.0,
            "pruned_at": None,
            "trial": {"study": "lora-s", "number": number, "space": space},
        }

    trials = [
        trial(0, 1e-3, "completed", 0.80),
        trial(1, 9.5e-3, "completed", 0.90),
        trial(2, 2e-4, "pruned", 0.95),
        trial(3, 3e-3, "failed", None),
    ]
    [found] = search_summary(trials, "val_macro_f1", TASKS["classification"])
    assert found["best"] == {
        "settings": {"strategies.lora.learning_rate": 9.5e-3},
        "validation": 0.90,
        "trial": 1,
    }
    assert (found["completed"], found["pruned"], found["failed"], found["train_time_s"]) == (2, 1, 1, 40.0)
    assert describe_search([found]) == [
        "Each strategy's settings were searched on validation, then the best confirmed: lora over learning_rate "
        "0.0001..0.01 (log) (4 trials; 1 pruned, 1 failed): best learning_rate 0.0095.",
        "lora's best learning_rate (0.0095) sits at the high edge of its range (0.0001..0.01 (log)): the best may "
        "lie beyond it; widen search.space.strategies.lora.learning_rate and search again.",
    ]


def test_no_trial_starts_after_the_time_budget_and_the_trials_done_are_confirmed(
    write_config, tmp_path, monkeypatch, caplog
):
    config = search_config(write_config, trials=4, time_budget=50)
    caplog.set_level(logging.INFO, logger="bertlab")
    # each look at the clock is 30 s later: the second round would start at 60 s
    clock = iter(range(0, 10_000, 30))
    monkeypatch.setattr(experiment.search.time, "monotonic", lambda: next(clock))
    assert main.main(["--config", str(config), "--strategy", "bitfit", "--strategy", "lora"]) == 0
    runs = records(tmp_path)
    # bitfit's round of four trials started in time; lora's would have started after the budget
    assert sorted((r["strategy"], r["trial"]["number"]) for r in own_trials(runs).values()) == [
        ("bitfit", number) for number in range(4)
    ]
    assert "the time budget of 50s is spent; no new trial starts" in caplog.text
    assert "search lora: no trial completed, so there is nothing to confirm" in caplog.text
    assert {r["strategy"] for r in runs if r["trial"].get("confirms")} == {"bitfit"}


def test_a_config_rate_outside_the_range_is_still_the_first_trial_and_said_once(
    write_config, tmp_path, caplog, recwarn
):
    config = write_config(
        search={"method": "optuna", "trials": 1},
        training={"num_epochs": 1},
        strategies={"bitfit": {"learning_rate": 0.5}},
    )
    caplog.set_level(logging.INFO, logger="bertlab")
    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    [trial] = own_trials(records(tmp_path)).values()
    assert trial["varied"]["learning_rate"] == 0.5
    assert (
        "search bitfit: the config's own learning_rate, 0.5, lies outside the range searched (0.0001..0.03 "
        "(log)); it is still the first trial" in caplog.text
    )
    assert not [
        w for w in recwarn if "out of range" in str(w.message)
    ]  # Optuna's own warning is not repeated


def test_a_grid_run_of_a_trials_setting_is_its_result_and_its_scores_count_at_the_rungs(
    write_config, tmp_path, monkeypatch
):
    grid = write_config(training={"num_epochs": 2}, strategies={"bitfit": {"learning_rate": 0.001}})
    assert main.main(["--config", str(grid), "--strategy", "bitfit"]) == 0
    [grid_run] = records(tmp_path)
    trained = []
    real_fit = experiment.one_run.fit_and_test
    monkeypatch.setattr(
        experiment.one_run,
        "fit_and_test",
        lambda job, *a, **k: trained.append(job.run) or real_fit(job, *a, **k),
    )
    config = search_config(write_config, trials=2)  # its first trial: the config's own rate, 0.001
    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    # the config's own rate, trial 0, did not train again
    assert [run.trial["number"] for run in trained if not run.trial.get("confirms")] == [1]
    [study] = optuna.get_all_study_summaries(journal(tmp_path))
    first = optuna.load_study(study_name=study.study_name, storage=journal(tmp_path)).trials[0]
    history = grid_run["history"]
    assert first.state == optuna.trial.TrialState.COMPLETE and first.value == grid_run["best_metric"]
    # what the second trial was judged against at its rung
    assert first.intermediate_values == {
        e["step"]: -min(h["val_loss"] for h in history[: i + 1]) for i, e in enumerate(history)
    }


def test_a_draw_that_repeats_a_trials_setting_reuses_its_result_and_another_is_drawn(
    write_config, tmp_path, monkeypatch, caplog
):
    config = search_config(write_config, trials=2)
    own_rate, real_readable, repeated = 0.001, experiment.search.readable, []

    def first_draw_rounds_to_the_own_rate(params):  # as two rates do that round to the same three digits
        [value] = params.values()
        if not repeated and value != own_rate:
            repeated.append(value)
        return (
            {key: own_rate for key in params} if repeated and value == repeated[0] else real_readable(params)
        )

    monkeypatch.setattr(experiment.search, "readable", first_draw_rounds_to_the_own_rate)
    caplog.set_level(logging.INFO, logger="bertlab")
    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    [study] = optuna.get_all_study_summaries(journal(tmp_path))
    attrs = [
        t.user_attrs for t in optuna.load_study(study_name=study.study_name, storage=journal(tmp_path)).trials
    ]
    assert [a.get("repeats") for a in attrs] == [None, 0, None]  # the repeat did not count: a third draw ran
    assert len({r["run_id"] for r in own_trials(records(tmp_path)).values()}) == 2
    assert "search bitfit: a draw repeats trial 1's setting (learning_rate=0.001" in caplog.text
    assert "trial 2/2" in caplog.text and "trial 3/2" not in caplog.text


def test_a_repeated_first_draw_does_not_hold_up_the_later_draws(tmp_path):
    """TPE draws once the first (counted) trials have ended: a repeat among the first four is not one of them,
    so the fifth draw is made rather than waited for forever."""
    place = experiment.search_workers.StudyPlace(tmp_path, None)
    key = "strategies.bitfit.learning_rate"
    space = {key: {"low": 1e-4, "high": 1e-1, "log": True}}
    study = optuna.create_study(study_name="bitfit-probe", storage=place.storage, direction="maximize")
    for number in range(4):  # the first four ended; the second rounded to the first's setting
        study.add_trial(
            optuna.trial.create_trial(
                params={key: 1e-3},
                distributions={key: experiment.search.distribution(space[key])},
                value=0.5,
                user_attrs={"repeats": 0} if number == 1 else {},
            )
        )
    trial = experiment.search.claim_trial(
        SimpleNamespace(optuna_study=study, space=space, place=place, name="bitfit-probe"), 6, 0
    )
    assert trial is not None and trial.number == 4
