"""What runs leave on disk and later steps read: result records (one per run, in one shared results file) and
checkpoints (weights and the state to resume from)."""
