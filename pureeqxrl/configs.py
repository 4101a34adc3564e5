"""Checking a config before anything is compiled: every problem found at once, in plain words."""

from typing import Any


class ConfigChecks:
    """Collects the problems of one config; `raise_if_any` reports them all in one `ValueError`.

        checks = ConfigChecks(config)
        checks.positive("num_envs", "learning_rate")
        checks.require(config.batch_size <= config.buffer_size, "batch_size ... larger than ...")
        checks.raise_if_any()
    """

    def __init__(self, config: Any):
        self.config = config
        self.errors: list[str] = []

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.errors.append(message)

    def _each(self, names: tuple[str, ...], ok, rule: str) -> None:
        for name in names:
            value = getattr(self.config, name)
            self.require(ok(value), f"{name} must be {rule}, got {value!r}")

    def positive(self, *names: str) -> None:
        self._each(names, lambda v: v > 0, "positive")

    def non_negative(self, *names: str) -> None:
        self._each(names, lambda v: v >= 0, ">= 0")

    def in_unit_interval(self, *names: str) -> None:
        self._each(names, lambda v: 0 <= v <= 1, "in [0, 1]")

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValueError(f"Invalid {type(self.config).__name__}: " + "; ".join(self.errors))
