"""Using a trained run: predict reproduces each strategy's own test predictions, an export loads without this
project and agrees with predict, and every mistake is one line with exit status 2."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

import main
from config import load_config
from conftest import labelled_rows, small_config
from data import load_data
from strategies import STRATEGIES
from serving.onnx import onnx_predictor
from serving.predict import Predictor


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """One output folder holding a failed run, a run that kept no weights, a run with an MLP head, a logistic
    regression on the frozen encoder, then (the latest experiment) one run of every strategy."""
    folder = tmp_path_factory.mktemp("trained")
    pd.DataFrame(labelled_rows(per_class=30)).to_csv(folder / "tickets.csv", index=False)
    config = small_config(
        folder,
        tiny_model_dir,
        folder / "tickets.csv",
        training={"learning_rate": 3e-3},
        strategies={
            "partial_freezing": {"enabled": True},
            "frozen_encoder": {"enabled": True},
            "ia3": {"enabled": True},
            "loha": {"enabled": True},
            "gradual_unfreezing": {"enabled": True},
            "bottleneck_adapter": {"enabled": True},
            "lokr": {"enabled": True},
            "setfit": {"enabled": True, "num_iterations": 2},
        },
    )
    base = ["--config", str(config)]
    assert (
        main.main(
            base + ["--strategy", "full", "strategies.full.learning_rate=1e30", "training.num_epochs=1"]
        )
        == 1
    )
    assert main.main(base + ["--strategy", "bitfit", "training.seed=7", "output.keep_checkpoints=none"]) == 0
    # an MLP head on mean-pooled tokens, under LoRA (PEFT saves the head beside the adapter)
    assert (
        main.main(
            base
            + [
                "--strategy",
                "lora",
                "training.seed=3",
                "model.head.type=mlp",
                "model.head.pooling=mean",
                "model.head.hidden_size=16",
            ]
        )
        == 0
    )
    # logistic regression written into the head of the frozen encoder
    assert (
        main.main(
            base
            + [
                "--strategy",
                "frozen_encoder",
                "training.seed=5",
                "strategies.frozen_encoder.classifier=logistic_regression",
            ]
        )
        == 0
    )
    assert main.main(base) == 0
    runs = json.loads((folder / "outputs" / "results" / "all_results.json").read_text())["runs"]
    return {
        "folder": folder,
        "config": config,
        "output": folder / "outputs",
        "runs": runs,
        "test_texts": load_data(load_config(config).data).texts["test"],
    }


def cli(trained, *argv) -> int:
    command, *rest = argv
    return main.main([command, "--config", str(trained["config"]), *map(str, rest)])


def latest(trained) -> list[dict]:
    return [r for r in trained["runs"] if r["status"] == "completed" and r["seed"] == 42]


def test_predict_reproduces_every_strategys_test_predictions(trained):
    runs = latest(trained)
    assert sorted(r["strategy"] for r in runs) == sorted(STRATEGIES)
    for record in runs:
        predictor = Predictor.from_run(record["run_id"], trained["output"])
        rows = predictor.predict(trained["test_texts"])
        names = record["dataset"]["label_names"]
        assert [names.index(row["predicted_label"]) for row in rows] == record["test_predictions"], record[
            "strategy"
        ]
        assert all(0 < row["probability"] <= 1 for row in rows)


def test_best_is_the_best_validation_run_of_the_latest_experiment(trained):
    runs = latest(trained)
    best = max(runs, key=lambda r: r["best_metric"])  # one seed each: the chosen setting is the only one
    assert Predictor.from_run("best", trained["output"]).record["run_id"] == best["run_id"]


def test_predict_on_texts_prints_labels_with_probabilities(trained, capsys):
    assert (
        cli(
            trained,
            "predict",
            "--text",
            "my refund money please",
            "--text",
            "where is my parcel",
            "--top-k",
            "2",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("using run ") and "validation macro-F1 " in out
    assert "'my refund money please': refund (probability " in out and "; top: refund " in out
    assert "'where is my parcel': " in out


def test_predict_on_a_file_keeps_its_rows_and_order(trained, capsys):
    rows = [
        {"id": i, "text": text} for i, text in enumerate(["login password locked", "", "parcel courier box"])
    ]
    path = trained["folder"] / "new.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    assert cli(trained, "predict", "--input", path, "--top-k", "3") == 0
    written = pd.read_csv(trained["folder"] / "new.predictions.csv", keep_default_na=False)
    assert written["id"].tolist() == [0, 1, 2] and written["text"].tolist() == [r["text"] for r in rows]
    assert {"predicted_label", "probability", "top_3_label", "top_3_probability"} <= set(written.columns)
    assert written["predicted_label"][1] == ""  # the empty text gets an empty prediction, not a crash
    expected = Predictor.from_run("best", trained["output"]).predict([rows[0]["text"], rows[2]["text"]])
    assert [written["predicted_label"][0], written["predicted_label"][2]] == [
        e["predicted_label"] for e in expected
    ]


def exported_labels(folder, texts, adapter: bool, num_labels: int) -> list[str]:
    """Labels from the exported folder, in a fresh process that cannot import this project."""
    if adapter:
        code = (
            "import json, sys, torch\nfrom peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoTokenizer\n"
            f"model = AutoPeftModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels={num_labels})\n"
            "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\ntexts = json.loads(sys.argv[2])\n"
            "with torch.no_grad():\n"
            "    logits = torch.cat([model(**tokenizer([t], return_tensors='pt', truncation=True)).logits for t in texts])\n"
            "names = json.load(open(sys.argv[1] + '/labels.json'))\n"
            "print(json.dumps([names[i] for i in logits.argmax(-1).tolist()]))\n"
        )
    else:
        code = (
            "import json, sys\nfrom transformers import pipeline\n"
            "classify = pipeline('text-classification', model=sys.argv[1], device='cpu')\n"
            "print(json.dumps([r['label'] for r in classify(json.loads(sys.argv[2]), truncation=True)]))\n"
        )
    return outside_the_project(code, folder, texts)


def outside_the_project(code: str, folder, texts: list[str]):
    """What `code` prints last (JSON), run with the folder and the texts (JSON) as arguments in a fresh process
    that cannot import this project."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(folder), json.dumps(texts)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("strategy", ["full", "lora", "prompt_tuning", "ia3"])
def test_an_export_loads_without_this_project_and_agrees_with_predict(trained, strategy):
    [record] = [r for r in latest(trained) if r["strategy"] == strategy]
    out = trained["folder"] / f"export-{strategy}"
    assert cli(trained, "export", "--run", record["run_id"], "--out", out) == 0
    card = (out / "README.md").read_text()
    assert f"run `{record['run_id']}`" in card and "| refund |" in card and "truncated" in card
    texts = trained["test_texts"]
    expected = [
        row["predicted_label"]
        for row in Predictor.from_run(record["run_id"], trained["output"]).predict(texts)
    ]
    adapter = strategy == "prompt_tuning"
    assert (out / "adapter_config.json").exists() == adapter and (out / "config.json").exists() != adapter
    if adapter:  # the card's recipe, with the label names it lists
        (out / "labels.json").write_text(json.dumps(record["dataset"]["label_names"]))
    assert exported_labels(out, texts, adapter, len(record["dataset"]["label_names"])) == expected


def test_bad_inputs_are_one_line_with_exit_status_2(trained, capsys):
    failed = next(r for r in trained["runs"] if r["status"] == "failed")
    weightless = next(r for r in trained["runs"] if r["seed"] == 7)
    not_a_run = trained["folder"] / "not-a-run"
    not_a_run.mkdir()
    no_text = trained["folder"] / "no_text.csv"
    pd.DataFrame([{"question": "a", "label": "b"}]).to_csv(no_text, index=False)
    broken = trained["folder"] / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n')
    full_out = trained["folder"] / "full-out"
    full_out.mkdir()
    (full_out / "something.txt").write_text("x")
    cases = [
        (["predict", "--run", "nope-123", "--text", "x"], "no run 'nope-123' in"),
        (["predict", "--run", "nope-123", "--text", "x"], "the most recent: "),
        (["predict", "--run", not_a_run, "--text", "x"], "is not a run folder (no record.json)"),
        (
            ["predict", "--run", failed["run_id"], "--text", "x"],
            f"run {failed['run_id']} failed (TrainingFailed",
        ),
        (["export", "--run", weightless["run_id"], "--out", trained["folder"] / "x"], "kept no weights"),
        (
            ["predict", "--input", no_text],
            "--text-column: column 'text' not in no_text.csv; its columns: question, label",
        ),
        (["predict", "--input", broken], "--input: could not read"),
        (["predict", "--input", trained["folder"] / "missing.csv"], "--input: "),
        (["export", "--out", full_out], "exists and is not empty; choose another folder or pass --force"),
        (["predict", "--text", "x", "--top-k", "0"], "--top-k: got 0"),
    ]
    for argv, expected in cases:
        capsys.readouterr()
        assert cli(trained, *argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and expected in err, (argv, err)
    [full] = [r for r in latest(trained) if r["strategy"] == "full"]
    # --force writes into it
    assert cli(trained, "export", "--run", full["run_id"], "--out", full_out, "--force") == 0


def test_bottleneck_adapters_predict_but_are_refused_by_export_with_the_reason(trained, capsys):
    [record] = [r for r in latest(trained) if r["strategy"] == "bottleneck_adapter"]
    assert (
        cli(trained, "export", "--run", record["run_id"], "--out", trained["folder"] / "export-bottleneck")
        == 2
    )
    assert (
        "cannot be exported: bottleneck adapters are not part of any Hugging Face model class"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize("seed", [3, 5])  # an MLP head; logistic regression in the frozen encoder's head
def test_runs_that_are_not_trained_by_the_loop_alone_predict_as_tested(trained, seed):
    [record] = [r for r in trained["runs"] if r["seed"] == seed]
    rows = Predictor.from_run(record["run_id"], trained["output"]).predict(trained["test_texts"])
    assert [record["dataset"]["label_names"].index(row["predicted_label"]) for row in rows] == record[
        "test_predictions"
    ]


def test_a_run_with_its_own_head_is_refused_by_export(trained, capsys):
    [record] = [r for r in trained["runs"] if r["seed"] == 3]
    assert cli(trained, "export", "--run", record["run_id"], "--out", trained["folder"] / "export-mlp") == 2
    assert (
        "cannot be exported: its model.head (mlp) is not part of any Hugging Face model class"
        in capsys.readouterr().err
    )


def test_every_strategy_but_prompt_tuning_exports_to_onnx_that_answers_as_the_run(trained, capsys):
    texts = trained["test_texts"]
    mlp_head = next(r for r in trained["runs"] if r["seed"] == 3)  # a head of this project's, under LoRA
    for record in latest(trained) + [mlp_head]:
        out = trained["folder"] / f"onnx-{record['run_id']}"
        status = cli(trained, "export", "--format", "onnx", "--run", record["run_id"], "--out", out)
        if record["strategy"] == "prompt_tuning":
            assert (
                status == 2
                and "cannot be exported to ONNX: PEFT puts its virtual tokens" in capsys.readouterr().err
            )
            continue
        assert status == 0, record["strategy"]
        check = json.loads((out / "onnx.json").read_text())["fp32_check"]
        assert check["same_prediction"] == check["examples"] > 0 and check["largest_difference"] <= 1e-3
        expected = Predictor.from_run(record["run_id"], trained["output"]).predict(texts)
        answered = onnx_predictor(str(out), trained["output"]).predict(texts)
        assert [row["predicted_label"] for row in answered] == [row["predicted_label"] for row in expected]
        assert [row["probability"] for row in answered] == pytest.approx(
            [row["probability"] for row in expected], abs=1e-5
        )


def test_an_int8_onnx_export_is_scored_on_test_and_loads_without_this_project(trained, capsys):
    [record] = [r for r in latest(trained) if r["strategy"] == "full"]
    out = trained["folder"] / "onnx-int8"
    assert (
        cli(
            trained,
            "export",
            "--format",
            "onnx",
            "--quantize",
            "int8",
            "--run",
            record["run_id"],
            "--out",
            out,
        )
        == 0
    )
    int8 = json.loads((out / "onnx.json").read_text())["int8"]
    assert int8["run_test"] == record["test"]["macro_f1"] and int8["loss"] == pytest.approx(
        int8["run_test"] - int8["test"]
    )
    card = (out / "README.md").read_text()
    assert f"test macro-F1 {int8['test']:.4f} against the run's {int8['run_test']:.4f}" in card
    code = (
        "import json, sys, numpy as np, onnxruntime\nfrom transformers import AutoTokenizer\n"
        "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "session = onnxruntime.InferenceSession(sys.argv[1] + '/model.int8.onnx')\n"
        "names = [i.name for i in session.get_inputs()]\nlabels = json.load(open(sys.argv[1] + '/record.json'))"
        "['dataset']['label_names']\nanswers = []\n"
        "for text in json.loads(sys.argv[2]):\n"
        "    batch = tokenizer([text], return_tensors='np', truncation=True, max_length=16)\n"
        "    logits = session.run(None, {n: batch[n] for n in names})[0]\n"
        "    answers.append(labels[int(logits.argmax())])\nprint(json.dumps(answers))\n"
    )
    texts = trained["test_texts"]
    expected = onnx_predictor(str(out), trained["output"], int8=True).predict(texts)
    assert outside_the_project(code, out, texts) == [row["predicted_label"] for row in expected]
    capsys.readouterr()
    assert cli(trained, "predict", "--backend", "onnx-int8", "--run", out, "--text", texts[0]) == 0
    assert f"{texts[0]!r}: {expected[0]['predicted_label']} (probability " in capsys.readouterr().out
    assert cli(trained, "export", "--quantize", "int8", "--run", record["run_id"], "--out", out / "x") == 2
    assert "--quantize: int8 is for --format onnx" in capsys.readouterr().err
