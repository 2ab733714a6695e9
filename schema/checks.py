"""How validation words a problem ("key: got value, allowed: ..."), for the config and its sections."""

from __future__ import annotations

from utils import shown


def problem(condition: bool, key: str, value, allowed: str) -> list[str]:
    """A config problem as validation words it (none when `condition` holds)."""
    return [] if condition else [f"{key}: got {shown(value)}, allowed: {allowed}"]


class Problems(list):
    """The problems a validation step finds, gathered as it goes."""

    def require(self, condition: bool, key: str, value, allowed: str) -> None:
        self.extend(problem(condition, key, value, allowed))


def list_problem(values, key: str, valid, allowed: str) -> list[str]:
    """The problem of a list setting whose items are not distinct and valid (none for null)."""
    return (
        []
        if values is None
        else problem(
            len(values) > 0 and all(valid(v) for v in values) and len(set(values)) == len(values),
            key,
            values,
            f"a non-empty list of distinct {allowed}",
        )
    )


def varied_keys(cfg) -> set[str]:
    """The dotted keys a sweep or the variants vary: rules across them are checked on each run's config."""
    return set(cfg.sweep) | {key for settings in cfg.variants.values() for key in settings}
