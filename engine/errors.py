"""One exception type for every configuration mistake a person can make.

Raised at the edge (building a model, an optimizer, a simulation or a sweep), before
anything is traced or compiled, with a message that names the field and the fix.
"""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and how to fix it."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field = field
        super().__init__(f"{field}: {problem}. Fix: {fix}")


def require(condition: bool, field: str, problem: str, fix: str) -> None:
    """Raise `ConfigError(field, problem, fix)` unless `condition` holds."""
    if not condition:
        raise ConfigError(field, problem, fix)


def choose(value, options, field: str):
    """Return `options[value]`, or raise a ConfigError listing the valid names."""
    if not isinstance(value, str) or value not in options:
        raise ConfigError(field, f"unknown value {value!r}",
                          f"use one of {', '.join(sorted(options))}")
    return options[value]
