"""Input written by a hostile or careless hand (a shared model or run folder, a config, data, files on disk):
each ends with exit status 2 and one line, executes nothing, asks nothing and leaves the output folder as it
was. The command line runs in-process: what is tested is the program's answer, not the process."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import main
import visualize
from conftest import labelled_rows
from records.results import read_results
from test_shared_files import RUNS, output, trained  # noqa: F401  (fixtures: one finished experiment)


def folder_bytes(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a digest of its bytes, to show a refused command changed nothing."""
    return (
        {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        if folder.exists()
        else {}
    )


def refused(argv: list[str], capsys, pattern: str) -> str:
    """Run the command line; it must exit 2 with one line on stderr matching `pattern`, and no traceback."""
    status = main.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert pattern in err[0], err[0]
    assert len(err[0]) < 600
    return err[0]


def custom_code_model(model_dir: Path, folder: Path, marker: Path, where: str = "config.json") -> Path:
    """A copy of the tiny model whose `where` names code of its own, which would write `marker` if it ran."""
    shutil.copytree(model_dir, folder)
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertConfig as EvilConfig, BertModel as EvilModel\n"
    )
    settings = json.loads((folder / where).read_text())
    settings["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModel": "evil.EvilModel",
        "AutoModelForSequenceClassification": "evil.EvilModel",
        "AutoTokenizer": ["evil.EvilConfig", None],
    }
    (folder / where).write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
@pytest.mark.parametrize("command", ["train", "dry-run"])
def test_a_model_folder_that_asks_to_run_its_own_code_is_refused_without_running_or_asking(
    where, command, write_config, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    marker = tmp_path / "code-ran"
    folder = custom_code_model(tiny_model_dir, tmp_path / "shared-model", marker, where)
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("asked whether to run the folder's code"))
    before = folder_bytes(tmp_path / "outputs")
    extra = ["--dry-run"] if command == "dry-run" else []
    refused(
        ["--config", write_config(), "--strategy", "full", f"model.name={folder}", *extra],
        capsys,
        f"model.name: '{folder}' asks to run code of its own ({where} has an auto_map)",
    )
    assert not marker.exists()
    assert folder_bytes(tmp_path / "outputs") == before


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)

FLOW_BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(6)
)

# Each case: text appended to the small config file (or None), overrides, and what the one line says.
CONFIG_CASES = {
    "an alias bomb in the file": (ALIAS_BOMB, [], "expands to more than 100,000 values through its aliases"),
    "an alias bomb in an override": (
        None,
        ["sweep={" + FLOW_BOMB + "}"],
        "sweep: the value expands to more than 100,000 values",
    ),
    "a key given twice": (
        "few_shot:\n  enabled: false\n  enabled: true\n",
        [],
        "the key 'enabled' is given twice in one mapping",
    ),
    "a section given twice": (
        "training:\n  seed: 1\n",
        [],
        "the key 'training' is given twice in one mapping",
    ),
    "nesting past any config's depth in the file": (
        "deep: " + "[" * 5000 + "]" * 5000 + "\n",
        [],
        "nests deeper than",
    ),
    "20,000 nested brackets in an override": (
        None,
        ["sweep=" + "[" * 20000 + "]" * 20000],
        "nests deeper than",
    ),
    "an infinite learning rate": (
        None,
        ["training.learning_rate=.inf"],
        "training.learning_rate: expected a finite number, got inf",
    ),
    "a learning rate that is not a number": (
        None,
        ["training.learning_rate=.nan"],
        "training.learning_rate: expected a finite number, got nan",
    ),
    "an infinite weight decay": (
        None,
        ["training.weight_decay=-.inf"],
        "training.weight_decay: expected a finite",
    ),
    "an infinite class weight": (
        None,
        ["training.class_weights={a: .inf}"],
        "training.class_weights: expected",
    ),
    "a float that overflows to infinity": (
        None,
        ["strategies.lora.learning_rate=1e999"],
        "strategies.lora.learning_rate: expected a finite number",
    ),
    "an empty label separator": (
        None,
        ["data.label_separator=''"],
        "data.label_separator: got '', allowed: a string",
    ),
    "a separator of spaces": (None, ["data.label_separator='  '"], "data.label_separator: got '  '"),
    "a huge value where a number goes": (
        None,
        ["training.batch_size=" + "x" * 200_000],
        "training.batch_size: expected an integer, got 'xxxx",
    ),
    "a huge unknown key": (None, ["training." + "k" * 50_000 + "=1"], "unknown key 'training.kkkk"),
    "a config that is a list": ("", [], None),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_a_hostile_config_gets_one_short_line_at_once(case, write_config, tmp_path, capsys):
    appended, overrides, message = CONFIG_CASES[case]
    config = write_config()
    if case == "a config that is a list":
        config.write_text("- model\n- data\n")
        message = "expected a mapping of sections at the top, got list"
    elif appended:
        config.write_text(config.read_text() + appended)
    before = folder_bytes(tmp_path)
    refused(["--config", config, "--dry-run", *overrides], capsys, message)
    assert folder_bytes(tmp_path) == before


def test_an_override_of_a_block_marker_is_the_character_itself(write_config):
    from config import load_config

    assert load_config(write_config(), ["data.label_separator=|"]).data.label_separator == "|"
    assert load_config(write_config(), ["data.label_separator=>"]).data.label_separator == ">"
    assert load_config(write_config(), ["data.label_separator=' | '"]).data.label_separator == " | "


def rows_with(label_or_text: str, values: list) -> list[dict]:
    """The small data set's rows with `values` written over the first rows of one column."""
    rows = labelled_rows(per_class=10)
    for row, value in zip(rows, values):
        row[label_or_text] = value
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_parquet(path)
    return path


# Each case: a function writing the data file into a folder, extra overrides, and what the one line says.
DATA_CASES = {
    "labels mixing integers and strings": (
        lambda tmp: write_jsonl(tmp / "d.jsonl", rows_with("label", [3])),
        [],
        "data.label_column: column 'label' of the train data mixes numbers and strings",
    ),
    "labels that are objects": (
        lambda tmp: write_jsonl(tmp / "d.jsonl", rows_with("label", [{"name": "billing"}])),
        [],
        "column 'label' of the train data holds dict values (row 1: {'name': 'billing'})",
    ),
    "labels that are lists": (
        lambda tmp: write_jsonl(tmp / "d.jsonl", rows_with("label", [["billing", "account"]])),
        [],
        "column 'label' of the train data holds list values",
    ),
    "labels that are lists in Parquet": (
        lambda tmp: write_parquet(
            tmp / "d.parquet", [{**r, "label": [r["label"]]} for r in labelled_rows(10)]
        ),
        [],
        "column 'label' of the train data holds",
    ),
    "texts that are lists": (
        lambda tmp: write_jsonl(tmp / "d.jsonl", rows_with("text", [["my", "card", "broke"]])),
        [],
        "data.text_column: column 'text' of the train data holds list values (row 1: ['my', 'card', 'broke'])",
    ),
    "texts that are objects": (
        lambda tmp: write_jsonl(tmp / "d.jsonl", rows_with("text", [{"body": "refund"}])),
        [],
        "column 'text' of the train data holds dict values",
    ),
    "texts that are true or false": (
        lambda tmp: write_jsonl(tmp / "d.jsonl", rows_with("text", [True])),
        [],
        "column 'text' of the train data holds bool values",
    ),
    "a pair column of lists": (
        lambda tmp: write_jsonl(tmp / "d.jsonl", [{**r, "other": ["x"]} for r in labelled_rows(10)]),
        ["data.text_pair_column=other"],
        "data.text_pair_column: column 'other' of the train data holds list",
    ),
    "a column named twice in a CSV": (
        lambda tmp: write_text(tmp / "d.csv", "text,label,text\nhello,a,bye\nagain,b,there\n"),
        [],
        "its header names the column 'text' 2 times",
    ),
    "a column named twice in a TSV": (
        lambda tmp: write_text(tmp / "d.tsv", "text\tlabel\tlabel\nhello\ta\tb\n"),
        [],
        "its header names the column 'label' 2 times",
    ),
    "a CSV with a NUL byte in its header": (
        lambda tmp: write_text(tmp / "d.csv", "te\x00xt,label\nhello,a\n"),
        [],
        "column 'text' not in the train data",
    ),
    "a JSON file that is one number": (lambda tmp: write_text(tmp / "d.json", "42"), [], "could not read"),
    "a JSONL file with a line that is not JSON": (
        lambda tmp: write_text(tmp / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": \n'),
        [],
        "could not read",
    ),
    "a Parquet file that is not Parquet": (
        lambda tmp: write_text(tmp / "d.parquet", "text,label\n"),
        [],
        "could not read",
    ),
}


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", DATA_CASES)
def test_data_of_the_wrong_shape_gets_one_line_naming_the_column_and_row(
    case, write_config, tmp_path, capsys
):
    make, overrides, message = DATA_CASES[case]
    path, config = make(tmp_path), write_config()
    before = folder_bytes(tmp_path)
    refused(
        ["--config", config, "--strategy", "full", f"data.path={path}", *overrides, "--dry-run"],
        capsys,
        message,
    )
    assert folder_bytes(tmp_path) == before


def test_a_label_written_as_nan_is_dropped_and_counted_never_a_class(write_config, tmp_path):
    from data import load_data
    from config import load_config

    rows = rows_with("label", ["NaN", "nan", float("nan")])
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = load_data(load_config(write_config(), [f"data.path={path}"]).data)
    assert "NaN" not in data.label_names and "nan" not in data.label_names
    assert sum(split.get("missing_label", 0) for split in data.cleaning.values()) == 3


# Valid JSON of the wrong shape in a shared file: (file under results/, its contents, what the line says).
WRONG_SHAPES = {
    "an experiment that is an empty mapping": ("experiment.json", {}, "holds no experiment"),
    "an experiment whose run ids are numbers": (
        "experiment.json",
        {"run_ids": [1, 2]},
        "holds no experiment",
    ),
    "a data report that is a string": ("data_report.json", "report", "holds no mapping of data fingerprints"),
    "a data report of lists": ("data_report.json", {"abc": []}, "holds no mapping of data fingerprints"),
    "a verdict that is a list": ("verdict.json", [], "holds no verdict"),
    "results whose runs are a mapping": ("all_results.json", {"runs": {}}, "holds no list of run records"),
    "a record without a status": ("all_results.json", "drop status", "without a status"),
    "a record whose run id is a number": ("all_results.json", "number run id", "holds no run record"),
}


@pytest.mark.parametrize("case", WRONG_SHAPES)
def test_a_shared_file_of_the_wrong_shape_stops_every_command_in_one_line_and_repair_mends_it(
    case, output, capsys
):
    folder, args = output
    name, contents, message = WRONG_SHAPES[case]
    path = folder / "results" / name
    if isinstance(contents, str) and name == "all_results.json":
        runs = json.loads(path.read_text())["runs"]
        if contents == "drop status":
            del runs[0]["status"]
        else:
            runs[0]["run_id"] = 7
        contents = {"runs": runs}
    path.write_text(json.dumps(contents))
    before = folder_bytes(folder)
    refused([*args, *RUNS], capsys, message)
    if name in ("all_results.json", "experiment.json"):  # what predict reads to find the run
        refused(["predict", *args, "--text", "my parcel is late"], capsys, message)
    else:
        assert main.main(["predict", *args, "--text", "my parcel is late"]) == 0
        capsys.readouterr()
    assert folder_bytes(folder) == before  # nothing written over, the damage kept for --repair
    if name != "verdict.json":  # visualize reads the rest (the verdict it works out anew)
        assert visualize.main(["--output-dir", str(folder)]) == 2
        assert message in capsys.readouterr().err
        assert folder_bytes(folder) == before
    assert main.main([*args, "--repair"]) == 0
    assert "set aside as" in capsys.readouterr().out
    assert main.main([*args, *RUNS]) == 0  # mended: both runs are found again and nothing trains twice
    assert len(read_results(folder / "results" / "all_results.json")) == 2


def complete_journal(path: Path) -> bytes:
    """A journal of two complete operations, as Optuna writes one line each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        json.dumps({"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]})
        + "\n"
        + json.dumps({"op_code": 4, "worker_id": "w", "study_id": 0, "datetime_start": "2026-12-06"})
        + "\n"
    )
    path.write_bytes(text.encode())
    return text.encode()


@pytest.mark.parametrize("damage", ["truncated mid-line", "a broken line inside"])
def test_a_damaged_search_journal_is_never_appended_to_and_repair_keeps_its_complete_operations(
    damage, output, capsys
):
    from experiment.search_workers import study_journal
    from records.shared import DamagedFile

    folder, args = output
    journal = folder / "search" / "journal.log"
    whole = complete_journal(journal)
    damaged = (
        whole + b'{"op_code": 5, "worker'
        if damage == "truncated mid-line"
        else whole.replace(b"\n", b"\nnot json\n", 1)
    )
    journal.write_bytes(damaged)
    with pytest.raises(DamagedFile, match="the search journal cannot be continued"):
        study_journal(journal.parent)
    refused([*args, *RUNS, "search.method=optuna", "search.trials=2"], capsys, "journal.log")
    assert journal.read_bytes() == damaged
    assert main.main([*args, "--repair"]) == 0
    printed = capsys.readouterr().out
    kept = 2 if damage == "truncated mid-line" else 1
    assert f"kept its {kept} complete operation(s)" in printed
    assert journal.read_bytes() == b"".join(line + b"\n" for line in whole.split(b"\n")[:kept])
    assert [p.read_bytes() for p in journal.parent.glob("journal.log.damaged-*")] == [damaged]
    study_journal(journal.parent)  # readable again


def test_a_killed_run_is_never_silently_started_over(output, capsys):
    folder, args = output
    record = read_results(folder / "results" / "all_results.json")[0]
    run_dir = folder / "checkpoints" / record["strategy"] / record["run_id"]
    results = folder / "results" / "all_results.json"
    runs = json.loads(results.read_text())["runs"]
    results.write_text(json.dumps({"runs": [r for r in runs if r["run_id"] != record["run_id"]]}))
    (run_dir / "last.pt").write_bytes(
        (run_dir / "last.pt").read_bytes() if (run_dir / "last.pt").exists() else b"x"
    )
    before = folder_bytes(folder)
    refused(
        [*args, *RUNS],
        capsys,
        f"were interrupted and kept their checkpoint (e.g. {record['run_id']}): python main.py --resume",
    )
    assert folder_bytes(folder) == before


def test_predict_never_writes_over_what_the_output_folder_keeps_nor_into_a_missing_folder(
    output, tmp_path, capsys
):
    folder, args = output
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nmy parcel is late\n")
    before = folder_bytes(folder)
    refused(
        ["predict", *args, "--input", texts, "--output", folder / "results" / "all_results.json"],
        capsys,
        "which hold the runs' records, checkpoints and results",
    )
    refused(["predict", *args, "--input", texts, "--output", texts], capsys, "is the --input file itself")
    refused(
        ["predict", *args, "--input", texts, "--output", tmp_path / "nowhere" / "p.csv"],
        capsys,
        "the folder '" + str(tmp_path / "nowhere") + "' does not exist",
    )
    refused(["predict", *args, "--input", texts, "--output", tmp_path], capsys, "is a folder; name a file")
    assert folder_bytes(folder) == before
    assert main.main(["predict", *args, "--input", str(texts), "--output", str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").read_text().startswith("text,")


def test_an_output_folder_that_cannot_be_written_is_named_before_anything_runs(
    write_config, tmp_path, capsys
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    refused(
        ["--config", write_config(), "--strategy", "full", f"output.dir={blocker}"],
        capsys,
        f"output.dir: '{blocker}' is a file, not a folder",
    )
    refused(
        ["--config", write_config(), "--strategy", "full", f"output.dir={blocker / 'outputs'}"],
        capsys,
        "output.dir: cannot make the folder",
    )
    assert blocker.read_text() == "not a folder"


def test_export_refuses_a_file_and_a_place_it_cannot_write_and_leaves_no_half_export(
    output, tmp_path, capsys, monkeypatch
):
    import errno

    from transformers import PreTrainedModel

    folder, args = output
    target = tmp_path / "exported"
    target.write_text("a file")
    refused(["export", *args, "--out", target, "--force"], capsys, f"--out: '{target}' is a file")
    assert target.read_text() == "a file"
    refused(
        ["export", *args, "--out", target / "model"], capsys, f"--out: '{target}' is a file, not a folder"
    )
    refused(["export", *args, "--out", folder / "exported"], capsys, "is inside the output folder")

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    refused(
        ["export", *args, "--out", tmp_path / "model"],
        capsys,
        f"cannot write {tmp_path / 'model'}: No space left on device; free some space",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "outputs"]  # nothing half-written


def test_a_full_disk_while_writing_a_record_is_one_line_and_keeps_the_results(output, capsys, monkeypatch):
    import errno

    import utils

    folder, args = output
    before = folder_bytes(folder / "results")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.os, "fsync", full_disk)
    refused([*args, *RUNS, "--force"], capsys, "No space left on device; free some space")
    assert {k: v for k, v in folder_bytes(folder / "results").items() if k == "all_results.json"} == {
        k: v for k, v in before.items() if k == "all_results.json"
    }
    assert not list(folder.rglob(".*.tmp"))  # no temporary file left behind


def a_run_folder(folder: Path) -> Path:
    record = read_results(folder / "results" / "all_results.json")[0]
    return folder / "checkpoints" / record["strategy"] / record["run_id"]


@pytest.mark.parametrize(
    "damage", ["weights of the wrong shape", "metadata that is not a number", "an infinite temperature"]
)
def test_damaged_weights_of_the_right_format_stop_predict_in_one_line(damage, output, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    folder, args = output
    path = a_run_folder(folder) / "best.safetensors"
    weights = load_file(path)
    with __import__("safetensors").safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    if damage == "weights of the wrong shape":
        name = next(iter(weights))
        weights[name] = torch.zeros(3, 1, 2)
    elif damage == "metadata that is not a number":
        metadata["epoch"] = "three"
    else:
        metadata["temperature"] = "inf"
    save_file(weights, path, metadata=metadata)
    run_id = path.parent.name
    message = {
        "weights of the wrong shape": "does not fit the run's model",
        "metadata that is not a number": "its metadata (epoch, temperature, run key) is not what bertlab",
        "an infinite temperature": "not a finite number",
    }[damage]
    refused(["predict", *args, "--run", run_id, "--text", "my parcel is late"], capsys, message)


@pytest.mark.parametrize("held", [[1, 2, 3], {"run_key": {}}])
def test_a_resume_state_that_holds_the_wrong_thing_stops_resume_in_one_line(held, output, capsys):
    import torch

    folder, args = output
    run_dir = a_run_folder(folder)
    results = folder / "results" / "all_results.json"
    runs = json.loads(results.read_text())["runs"]
    results.write_text(json.dumps({"runs": [r for r in runs if r["run_id"] != run_dir.name]}))
    torch.save(held, run_dir / "last.pt")
    before = folder_bytes(folder)
    refused([*args, *RUNS, "--resume"], capsys, "not a resume state bertlab wrote")
    assert folder_bytes(folder) == before


def test_a_shared_run_folder_naming_a_model_with_code_of_its_own_runs_nothing(
    output, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    folder, args = output
    marker = tmp_path / "code-ran"
    model = custom_code_model(tiny_model_dir, tmp_path / "shared-model", marker)
    run_dir = a_run_folder(folder)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace(str(tiny_model_dir), str(model)))
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("asked whether to run the folder's code"))
    refused(["predict", *args, "--run", run_dir, "--text", "hello"], capsys, "asks to run code of its own")
    refused(
        ["export", *args, "--run", run_dir, "--out", tmp_path / "exported"],
        capsys,
        "asks to run code of its own",
    )
    refused([*args, *RUNS, f"model.init_from={run_dir}"], capsys, "asks to run code of its own")
    assert not marker.exists()


def test_a_run_folder_config_with_a_python_tag_is_refused_not_built(output, tmp_path, capsys):
    folder, args = output
    marker = tmp_path / "code-ran"
    run_dir = a_run_folder(folder)
    (run_dir / "config.yaml").write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    refused(
        ["predict", *args, "--run", run_dir, "--text", "hello"], capsys, "could not determine a constructor"
    )
    assert not marker.exists()
