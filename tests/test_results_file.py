import json
import multiprocessing

from records.results import save_record


def write_records(path, writer: int, count: int) -> None:
    for i in range(count):
        save_record(path, {"run_id": f"w{writer}-{i}", "status": "completed"})


def test_two_processes_writing_one_results_file_lose_no_record(tmp_path):
    path = tmp_path / "results" / "all_results.json"
    processes = [
        multiprocessing.get_context("fork").Process(target=write_records, args=(path, w, 40)) for w in (1, 2)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    run_ids = {r["run_id"] for r in json.loads(path.read_text())["runs"]}
    assert run_ids == {f"w{w}-{i}" for w in (1, 2) for i in range(40)}


def test_a_rerun_replaces_only_its_own_record(tmp_path):
    path = tmp_path / "all_results.json"
    save_record(path, {"run_id": "a", "status": "failed"})
    save_record(path, {"run_id": "b", "status": "completed"})
    save_record(path, {"run_id": "a", "status": "completed"})
    assert json.loads(path.read_text())["runs"] == [
        {"run_id": "b", "status": "completed"},
        {"run_id": "a", "status": "completed"},
    ]


def test_written_files_are_readable_like_any_other_file(tmp_path):
    import os

    from utils import atomic_write_json

    atomic_write_json(tmp_path / "shared.json", {"a": 1})
    (tmp_path / "plain.txt").write_text("x")
    assert (
        os.stat(tmp_path / "shared.json").st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777
    )


def test_a_record_from_before_schema_versions_reads_as_the_current_layout(tmp_path):
    from records.results import SCHEMA_VERSION, read_results
    from reporting.summary import summarize

    path = tmp_path / "all_results.json"
    old = {
        "run_id": "lora-1",
        "strategy": "lora",
        "status": "completed",
        "seed": 0,
        "best_epoch": 1,
        "history": [{"epoch": 1, "val_macro_f1": 0.5}],
        "test": {"macro_f1": 0.4},
        "train_time_s": 1.0,
        "peak_memory_mb": 10.0,
        "model": "minilm",
        "dataset": {"name": "d", "label_names": ["a", "b"]},
        "hyperparameters": {"learning_rate": 1e-3},
        "diagnostics": [],
    }
    save_record(path, old)
    save_record(
        path,
        {
            "run_id": "full-2",
            "status": "failed",
            "strategy": "full",
            "schema_version": SCHEMA_VERSION,
            "task": "regression",
            "config_id": "full-c",
        },
    )
    upgraded, current = read_results(path)
    assert upgraded == {
        **old,
        "schema_version": SCHEMA_VERSION,
        "task": "classification",
        "config_id": "lora-1",
        "varied": {},
        "few_shot": None,
        "init_from": None,
        "export_refused": None,
        "num_processes": 1,
        "peak_memory_measure": "process_peak_rss",
        "fold": None,
    }
    # the current layout is kept
    assert current["task"] == "regression" and "peak_memory_measure" not in current
    assert json.loads(path.read_text())["runs"][0] == old  # the file keeps what it holds
    assert summarize([upgraded], "val_macro_f1")["rows"][0]["config_id"] == "lora-1"
