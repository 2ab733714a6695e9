"""Run folders are shared between people: loading a checkpoint must never run code, and the weights a run
keeps are safetensors."""

import json
from pathlib import Path

import pytest
import torch

import main
from records.checkpoints import load_weights, read_resume_state
from utils import ConfigError


class TouchesAFile:
    """Unpickling this calls Path.touch: any code could stand in its place."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"run_key": {}, "state": TouchesAFile(marker)}, tmp_path / "last.pt")
    torch.load(tmp_path / "last.pt", weights_only=False)  # what an unsafe loader does
    assert marker.exists()
    marker.unlink()
    with pytest.raises(
        ConfigError,
        match=r"last\.pt holds objects other than tensors and plain data, which could run "
        r"code when loaded, so it is refused",
    ):
        read_resume_state(tmp_path / "last.pt")
    assert not marker.exists()


def test_resuming_from_such_a_checkpoint_stops_with_one_line_and_status_2(write_config, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    config = write_config()
    assert main.main(["--config", str(config), "--strategy", "bitfit", "training.num_epochs=1"]) == 0
    [record] = json.loads((tmp_path / "outputs" / "results" / "all_results.json").read_text())["runs"]
    run_dir = tmp_path / "outputs" / "checkpoints" / "bitfit" / record["run_id"]
    weights, metadata = load_weights(run_dir / "best.safetensors")
    assert metadata["epoch"] == 1 and metadata["run_key"]["strategy"] == "bitfit"
    assert sum(w.numel() for w in weights.values()) == record["trainable_params"]
    saved = torch.load(run_dir / "last.pt", weights_only=True)
    torch.save({**saved, "state": TouchesAFile(marker)}, run_dir / "last.pt")
    status = main.main(
        ["--config", str(config), "--strategy", "bitfit", "training.num_epochs=1", "--force", "--resume"]
    )
    assert status == 2 and not marker.exists()
    assert "holds objects other than tensors and plain data" in capsys.readouterr().err
