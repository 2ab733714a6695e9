"""The parts of the config schema beside config.py: YAML read into typed dataclasses, the wording of config
problems, and the strategies' config sections with their own checks."""
