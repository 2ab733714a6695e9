"""The command line: fine-tune a BERT-family encoder with each configured strategy and compare them.

    python main.py [--config FILE] [--strategy NAME ...] [--resume] [--force] [--dry-run] [--debug] [section.key=value ...]

Exit status: 0 when every run completed, 1 when some run failed (its record says why),
2 for a mistake in the config, the command line or the data, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from config import load_config
from experiment import run_experiment
from model import STRATEGIES
from utils import ConfigError

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare fine-tuning strategies for text classification.")
    parser.add_argument("--config", default="config.yaml", help="YAML config (default: config.yaml)")
    parser.add_argument("--strategy", action="append", choices=sorted(STRATEGIES),
                        help="run only this strategy, enabled or not (repeat for several)")
    parser.add_argument("--resume", action="store_true",
                        help="continue interrupted runs from their last checkpoint (completed runs are always reused)")
    parser.add_argument("--force", action="store_true", help="run again even the runs already completed")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the planned runs, what is cached, parameter counts and a time estimate; train nothing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for config and data errors")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override a config value, e.g. training.learning_rate=3e-5")
    return parser.parse_intermixed_args(argv)  # overrides may come before and after options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(message)s")
    import transformers

    transformers.logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    transformers.logging.disable_progress_bar()
    # peft 0.21 calls a transformers method that transformers 5 has renamed: nothing for users to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        cfg = load_config(args.config, args.overrides)
        strategies = args.strategy or [s for s in STRATEGIES if getattr(cfg.strategies, s).enabled]
        if not strategies:
            raise ConfigError(f"{args.config}: no strategy enabled; set strategies.<name>.enabled: true or pass "
                              f"--strategy NAME (known: {', '.join(sorted(STRATEGIES))})")
        return run_experiment(cfg, strategies, resume=args.resume, force=args.force, dry_run=args.dry_run,
                              config_file=str(args.config), command=" ".join(sys.argv))
    except ConfigError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: `python main.py --resume` continues from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
