"""How the workers of a search share its studies: the journal file that holds them, the lease a worker keeps on
each trial it runs, and the trials that stopped workers left running, which run again. `study` is always a
search.Study (not imported: the search module builds on this one)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

from records.shared import JOURNAL, DamagedFile, journal_problem

logger = logging.getLogger("bertlab")

LEASE_SECONDS = 30  # how often a running trial's worker says it is alive
LEASE_GRACE = 300  # a running trial whose worker has been silent this long was left by a killed process


def study_journal(folder: Path):
    """Optuna's journal file in `folder`: no server, safe for several processes, readable by optuna-dashboard."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    problem = journal_problem(folder / JOURNAL)
    if problem:  # appending would make it permanent: the next operation would join the broken line
        raise DamagedFile(folder / JOURNAL, f"the search journal cannot be continued: {problem}",
                          f"python main.py --repair output.dir={folder.parent} keeps its complete operations")
    path = str(folder / JOURNAL)
    # the open lock also works on network file systems, where symbolic links may not
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def release_abandoned(study) -> None:
    """Fail the running trials whose worker is gone (its process ended on this host, or silent for
    LEASE_GRACE seconds elsewhere) and queue their settings again: each runs again, counted once."""
    from optuna.trial import TrialState

    for trial in study.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")  # none: its worker stopped between claiming and naming itself
        if worker and alive(worker, lease_path(study, trial.number)):
            continue
        logger.warning("search %s: trial %d was left running by a worker that has stopped (%s): it runs again",
                       study.name, trial.number, worker)
        interrupted(study, trial)


def alive(worker: dict, lease: Path) -> bool:
    if worker["host"] == socket.gethostname():
        if worker["pid"] == os.getpid():
            return True
        try:
            os.kill(worker["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a process of another user holds that number now
            return False
        return True
    return lease.exists() and time.time() - lease.stat().st_mtime < LEASE_GRACE


def lease_path(study, number: int) -> Path:
    return Path(study.lock.lock_file).parent / "leases" / f"{study.name}-{number}"


class Lease:
    """Touches the trial's lease file every LEASE_SECONDS while it runs, so that workers on other machines can
    tell a running trial from one a killed process left."""

    def __init__(self, path: Path):
        self.path, self.stopped = path, threading.Event()

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()
        return self

    def _beat(self):
        while not self.stopped.wait(LEASE_SECONDS):
            self.path.touch()

    def __exit__(self, *exc):
        self.stopped.set()
        self.path.unlink(missing_ok=True)


def interrupted(study, trial) -> None:
    """Fail a trial that did not end (its process stopped) and queue its setting again."""
    from optuna.trial import TrialState

    study.storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
    study.optuna_study.tell(trial.number, state=TrialState.FAIL)
    study.optuna_study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})


def running_elsewhere(studies: list) -> int:
    """How many trials of the studies other workers are running (after failing those a killed worker left)."""
    from optuna.trial import TrialState

    running = 0
    for study in studies:
        with study.lock:
            release_abandoned(study)
        running += len(study.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return running
