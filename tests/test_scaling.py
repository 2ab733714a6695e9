"""Beyond one process on one machine: a plan split into shards over many workers, experiment trackers, and
bf16 mixed precision where the hardware has it."""

import csv
import json

import pytest

import main
from experiment import assign_shards
from trainer import make_accelerator


def read_results(folder) -> list[dict]:
    return json.loads((folder / "outputs" / "results" / "all_results.json").read_text())["runs"]


def comparable_summary(folder) -> list[dict]:
    """summary.csv without the columns that measure this machine at this moment (time and memory)."""
    with open(folder / "outputs" / "results" / "summary.csv") as f:
        return [
            {k: v for k, v in row.items() if not k.startswith(("train_time", "peak_memory"))}
            for row in csv.DictReader(f)
        ]


SIX_RUNS = [
    "--strategy",
    "full",
    "--strategy",
    "lora",
    "--strategy",
    "bitfit",
    "training.seeds=[1,2]",
    "training.num_epochs=1",
]


def test_two_shards_run_disjoint_halves_of_the_plan_and_summarise_like_one_worker(
    write_config, tmp_path, capsys
):
    sharded = tmp_path / "sharded"
    config = write_config(output={"dir": str(sharded / "outputs")})
    assert main.main(["--config", str(config), *SIX_RUNS, "--shard", "0/2"]) == 0
    first = {r["run_id"] for r in read_results(sharded)}
    assert "still to finish in other shards" in capsys.readouterr().out
    assert not (sharded / "outputs" / "results" / "summary.md").exists()  # not before the plan has finished
    assert main.main(["--config", str(config), *SIX_RUNS, "--shard", "1/2"]) == 0
    second = {r["run_id"] for r in read_results(sharded)} - first
    assert len(first) == len(second) == 3  # equal costs: three runs each, none run twice
    # the last shard to finish wrote the summary; --summary-only writes it again from the results alone
    assert (sharded / "outputs" / "results" / "summary.md").exists()
    assert main.main(["--config", str(config), *SIX_RUNS, "--summary-only"]) == 0
    assert "## Verdict" in capsys.readouterr().out

    single = tmp_path / "single"
    config = write_config(output={"dir": str(single / "outputs")})
    assert main.main(["--config", str(config), *SIX_RUNS]) == 0
    assert {r["run_id"] for r in read_results(single)} == first | second  # the union is the unsharded plan
    assert comparable_summary(sharded) == comparable_summary(single)


def test_shares_balance_the_estimated_cost_the_same_way_on_every_worker():
    costs = [8.0, 1.0, 1.0, 1.0, 1.0, 4.0, 4.0, 2.0]
    owners = assign_shards(costs, 3)
    loads = [sum(c for c, o in zip(costs, owners) if o == k) for k in range(3)]
    assert owners == assign_shards(list(costs), 3)  # a pure function of the plan
    assert sorted(loads) == [7.0, 7.0, 8.0]  # the costliest run alone; the rest spread evenly
    assert owners[0] != owners[5] and owners[5] != owners[6]
    assert assign_shards(costs, 1) == [0] * len(costs)


def test_a_dry_run_shows_each_share_and_a_wrong_shard_is_refused(write_config, capsys):
    config = str(write_config())
    assert main.main(["--config", config, *SIX_RUNS, "--shard", "1/4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "run(s) planned in this shard, of the plan's 6" in out
    assert "estimated share of the training in each shard: 0/4:" in out and "3/4:" in out
    for wrong in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(SystemExit) as exit_info:
            main.main(["--config", config, f"--shard={wrong}"])
        assert exit_info.value.code == 2
        assert "allowed: K/N with 0 <= K < N" in capsys.readouterr().err


def test_summary_only_before_anything_ran_is_a_one_line_error(write_config, capsys):
    assert main.main(["--config", str(write_config()), "--summary-only"]) == 2
    assert "no run of this plan has finished" in capsys.readouterr().err


def test_a_tensorboard_tracker_logs_each_epoch_and_the_test_scores(write_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(output={"dir": str(tmp_path / "outputs"), "trackers": ["tensorboard"]})
    assert (
        main.main(
            [
                "--config",
                str(config),
                "--strategy",
                "lora",
                "training.num_epochs=3",
                "training.early_stopping.enabled=false",
            ]
        )
        == 0
    )
    [record] = read_results(tmp_path)
    events = EventAccumulator(str(tmp_path / "outputs" / "trackers" / record["run_id"]))
    events.Reload()
    for key in ("train_loss", "val_loss", "val_macro_f1", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(h["step"], pytest.approx(h[key], rel=1e-6)) for h in record["history"]], key
    [(step, value)] = [(e.step, e.value) for e in events.Scalars("test_accuracy")]
    assert step == record["best_step"] and value == pytest.approx(record["test"]["accuracy"], rel=1e-6)


def test_an_unknown_or_missing_tracker_is_a_config_error(write_config, capsys):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    assert main.main(["--config", str(write_config(output={"trackers": ["nope"]}))]) == 2
    assert (
        "output.trackers: got 'nope', allowed: aim, comet_ml, mlflow, tensorboard" in capsys.readouterr().err
    )
    missing = next(name for name in LOGGER_TYPE_TO_CLASS if name not in map(str, get_available_trackers()))
    assert main.main(["--config", str(write_config(output={"trackers": [missing]}))]) == 2
    assert (
        f"output.trackers: {missing!r} needs its package, which is not installed: pip install {missing}"
        in capsys.readouterr().err
    )


def test_bf16_excludes_fp16_and_falls_back_to_fp32_with_one_warning_without_a_gpu(
    write_config, caplog, capsys
):
    assert main.main(["--config", str(write_config(training={"bf16": True}))]) == 2
    assert "training.bf16: got True, allowed: false while training.fp16 is true" in capsys.readouterr().err
    with caplog.at_level("WARNING"):
        accelerator = make_accelerator(fp16=False, bf16=True)
    assert accelerator.mixed_precision == "no"  # this machine has no CUDA GPU
    assert "training.bf16 is ignored without a CUDA GPU that supports bfloat16" in caplog.text


def test_setfit_is_refused_under_several_processes(write_config, monkeypatch, capsys):
    import experiment.run as experiment_run

    def launched_twice(fp16, bf16):
        accelerator = make_accelerator(fp16, bf16)
        monkeypatch.setattr(type(accelerator), "num_processes", property(lambda self: 2))
        return accelerator

    monkeypatch.setattr(experiment_run, "make_accelerator", launched_twice)
    assert main.main(["--config", str(write_config()), "--strategy", "lora", "--strategy", "setfit"]) == 2
    assert "strategy setfit trains on one process, and this launch has 2" in capsys.readouterr().err
