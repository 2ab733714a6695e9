"""One process of a test's torchrun launch: `python main.py` with a fault the test asks for first.

--die-after-first-checkpoint  every process ends at once (exit status 3) once the first checkpoint is written
--nan-on-rank R               the process of rank R computes a NaN loss at its third training batch"""

import itertools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
import trainer  # noqa: E402
from tasks import TASKS  # noqa: E402


def die_after_first_checkpoint():
    save = trainer.save_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        os._exit(3)

    trainer.save_checkpoint = save_then_die


def nan_at_third_batch():
    task = TASKS["classification"]
    training_loss = task.training_loss

    def poisoned_training_loss(*args, **kwargs):
        loss_of, batches = training_loss(*args, **kwargs), itertools.count()
        return lambda outputs, labels: (
            loss_of(outputs, labels) * (float("nan") if next(batches) == 2 else 1.0)
        )

    task.training_loss = poisoned_training_loss


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--die-after-first-checkpoint" in argv:
        argv.remove("--die-after-first-checkpoint")
        die_after_first_checkpoint()
    if "--nan-on-rank" in argv:
        at = argv.index("--nan-on-rank")
        if os.environ["RANK"] == argv[at + 1]:
            nan_at_third_batch()
        del argv[at : at + 2]
    sys.exit(main.main(argv))
