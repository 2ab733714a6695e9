"""How the workers of a search share its studies: where they live (a journal file in the output folder, or a
database that workers on many machines reach), the lock a worker holds while it claims a trial, the sign of life
it gives for each trial it runs, and the trials that stopped workers left running, which run again. `study` is
always a search.Study (not imported: the search module builds on this one)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from pathlib import Path

from filelock import FileLock

from records.shared import JOURNAL, DamagedFile, journal_problem
from schema.search import STORAGE_VARIABLE, database_url, shown_url
from utils import ConfigError, stable_hash

logger = logging.getLogger("bertlab")

LEASE_SECONDS = 30  # how often a running trial's worker says it is alive
LEASE_GRACE = 300  # a running trial whose worker has been silent this long was left by a killed process


class StudyPlace:
    """Where a search's studies live and how the workers sharing them stay out of each other's way: a journal
    file in the output folder (file locks, lease files touched while a trial runs) or a database (its own
    locks, and Optuna's heartbeats kept in it, timed by the database's clock)."""

    def __init__(self, folder: Path, url: str | None):
        self.folder, self.url = folder, url
        self.storage = study_journal(folder) if url is None else study_database(url)
        self.dialect = None if url is None else self.storage.engine.dialect.name

    def describe(self) -> str:
        return (
            f"the journal {self.folder / JOURNAL}"
            if self.url is None
            else f"the database {shown_url(self.url)}"
        )

    def lock(self, study_name: str):
        """Held while a worker counts a study's trials and claims one, so that workers never exceed `trials`."""
        if self.dialect == "postgresql":
            return DatabaseLock(self.storage.engine, study_name)
        return FileLock(str(self.folder / f"{study_name}.lock"))  # a journal, or SQLite: one machine's file

    def lease(self, study_name: str, trial) -> Lease:
        """The sign of life a worker gives while it runs `trial`."""
        if self.url is not None:
            return Lease(lambda: self.storage.record_heartbeat(trial._trial_id), lambda: None)
        path = self.lease_path(study_name, trial.number)
        path.parent.mkdir(parents=True, exist_ok=True)
        return Lease(path.touch, lambda: path.unlink(missing_ok=True))

    def lease_path(self, study_name: str, number: int) -> Path:
        return self.folder / "leases" / f"{study_name}-{number}"

    def alive(self, worker: dict, study_name: str, number: int) -> bool:
        """Whether the worker running a trial is alive: on this host, its process; elsewhere, its lease file was
        touched within LEASE_GRACE seconds (with a database, Optuna judges its heartbeats: release_abandoned)."""
        if worker["host"] == socket.gethostname():
            return process_alive(worker["pid"])
        if self.url is not None:
            return True
        lease = self.lease_path(study_name, number)
        return lease.exists() and time.time() - lease.stat().st_mtime < LEASE_GRACE


def storage_url(configured: str | None) -> str | None:
    """The database a search's studies live in: search.storage, else the environment variable (which keeps a
    password out of the config), else none (the journal file)."""
    return configured or os.environ.get(STORAGE_VARIABLE) or None


def study_journal(folder: Path):
    """Optuna's journal file in `folder`: no server, safe for several processes, readable by optuna-dashboard."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    problem = journal_problem(folder / JOURNAL)
    if problem:  # appending would make it permanent: the next operation would join the broken line
        raise DamagedFile(
            folder / JOURNAL,
            f"the search journal cannot be continued: {problem}",
            f"python main.py --repair output.dir={folder.parent} keeps its complete operations",
        )
    path = str(folder / JOURNAL)
    # the open lock also works on network file systems, where symbolic links may not
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def study_database(url: str):
    """Optuna's storage in a database, with heartbeats: a running trial whose worker has been silent for
    LEASE_GRACE seconds fails and its setting is queued again (run_again)."""
    import optuna
    import sqlalchemy

    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                database_url(url),
                heartbeat_interval=LEASE_SECONDS,
                grace_period=LEASE_GRACE,
                heartbeat_stale_trial_callback=run_again,
            )
        except sqlalchemy.exc.SQLAlchemyError as error:
            failure = error
            time.sleep(1 + attempt)  # workers starting together race to create Optuna's tables: one wins
    reason = str(getattr(failure, "orig", None) or failure).strip().splitlines()[0]
    raise ConfigError(f"search.storage {shown_url(url)}: the database cannot be used: {reason}")


class DatabaseLock:
    """A PostgreSQL advisory lock named after a study, held for one transaction: workers on other machines
    wait for it, and the database lets it go if the worker holding it dies."""

    def __init__(self, engine, name: str):
        self.engine, self.key = engine, int(stable_hash(name), 16) % 2**62

    def __enter__(self):
        import sqlalchemy

        self.connection = self.engine.connect()
        self.connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.key})
        return self

    def __exit__(self, *exc):
        self.connection.rollback()  # ends the transaction, and with it the lock
        self.connection.close()


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the number now belongs to another user's process
        return False
    return True


def release_abandoned(study) -> None:
    """Fail the running trials whose worker is gone (its process ended on this host, or silent for LEASE_GRACE
    seconds elsewhere) and queue their settings again: each runs again, counted once."""
    import optuna
    from optuna.trial import TrialState

    if study.place.url is not None:
        with warnings.catch_warnings():  # "experimental": pinning optuna covers a change of its interface
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study.optuna_study)  # run_again queues each one it fails
    for trial in study.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")  # none: its worker stopped between claiming and naming itself
        if worker and study.place.alive(worker, study.name, trial.number):
            continue
        interrupted(study, trial)


def interrupted(study, trial) -> None:
    """Fail a trial that did not end (its process stopped) and queue its setting again."""
    from optuna.trial import TrialState

    logger.warning(
        "search %s: trial %d was left running by a worker that has stopped (%s): it runs again",
        study.name,
        trial.number,
        trial.user_attrs.get("worker"),
    )
    study.optuna_study.tell(trial.number, state=TrialState.FAIL)
    queue_again(study.optuna_study, trial)


def run_again(optuna_study, trial) -> None:
    """Optuna's call for a trial it failed because its worker's heartbeats stopped: queue its setting again."""
    logger.warning(
        "search %s: trial %d's worker (%s) has been silent for over %d s: the trial runs again",
        optuna_study.study_name,
        trial.number,
        trial.user_attrs.get("worker"),
        LEASE_GRACE,
    )
    queue_again(optuna_study, trial)


def queue_again(optuna_study, trial) -> None:
    """A failed trial's setting, queued to run again; the rerun names the trial it replaces (not counted)."""
    optuna_study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})


def left_by_stopped_workers(trials: list) -> set[int]:
    """The numbers of the trials that stopped workers left: each was queued again (and is not counted)."""
    return {t.user_attrs["rerun_of"] for t in trials if "rerun_of" in t.user_attrs}


class Lease:
    """Gives a running trial's sign of life every LEASE_SECONDS (in a thread), so that workers on other machines
    can tell it from one a killed process left."""

    def __init__(self, beat, end):
        self.beat, self.end, self.stopped = beat, end, threading.Event()

    def __enter__(self):
        self.beat()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()
        return self

    def _beat(self):
        while not self.stopped.wait(LEASE_SECONDS):
            try:
                self.beat()
            except Exception as error:  # a database that is briefly away: the next beat may reach it
                logger.warning("search: a trial's sign of life could not be given: %s", error)

    def __exit__(self, *exc):
        self.stopped.set()
        self.end()


def running_elsewhere(studies: list) -> int:
    """How many trials of the studies other workers are running (after failing those a killed worker left)."""
    from optuna.trial import TrialState

    running = 0
    for study in studies:
        with study.lock:
            release_abandoned(study)
        running += len(study.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return running
