"""An experiment: planning its runs, loading what they share once, running each into a record, the dry run and
shards; run_experiment is what main.py calls."""

from experiment.inputs import Inputs
from experiment.plan import Run, plan_runs
from experiment.run import Launch, applicable, run_experiment
from experiment.shards import assign_shards, passes

__all__ = ["Inputs", "Launch", "Run", "applicable", "assign_shards", "passes", "plan_runs", "run_experiment"]
