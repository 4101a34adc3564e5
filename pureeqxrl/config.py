"""The base every algorithm's config extends, and the checks that run before anything is compiled.

A config is a frozen dataclass of plain Python values: its fields are the CLI's flags (tyro reads
them), its defaults are the reference implementation's, and `validate()` reports every problem at
once, in plain words, before a single array is traced.
"""

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

INT32_MAX = 2**31 - 1
"""The largest count or size a compiled program holds: its step counters and indices are int32."""


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
            if isinstance(value, float) and math.isnan(value):
                continue  # `representable` reports it, once
            self.require(ok(value), f"{name} must be {rule}, got {value!r}")

    def positive(self, *names: str) -> None:
        self._each(names, lambda v: v > 0, "positive")

    def non_negative(self, *names: str) -> None:
        self._each(names, lambda v: v >= 0, ">= 0")

    def in_unit_interval(self, *names: str) -> None:
        self._each(names, lambda v: 0 <= v <= 1, "in [0, 1]")

    def representable(self) -> None:
        """Every number of the config, tuples' items included: floats finite (NaN and inf are
        refused, whatever the field), integers within int32."""
        for field in dataclasses.fields(self.config):
            value = getattr(self.config, field.name)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, float) and not math.isfinite(item):
                    self.errors.append(f"{field.name} must be finite, got {item!r}")
                elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > INT32_MAX:
                    self.errors.append(
                        f"{field.name} ({item}) is past {INT32_MAX:,}, the largest count a compiled "
                        "program holds (int32)"
                    )

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValueError(f"Invalid {type(self.config).__name__}: " + "; ".join(self.errors))


@dataclass(frozen=True)
class TrainConfig:
    """What every algorithm's config has. Subclasses set their reference's defaults and add their
    own fields; they extend `check` (calling `super().check(checks)`) to add their own rules."""

    env: str = "CartPole-v1"
    """Environment id: gymnax, navix (`Navix-...`), Brax (`brax-...`) or a `pureeqxrl.probes` name."""
    max_episode_steps: int | None = None
    """Override the environment's time limit; episodes are truncated (and bootstrapped) there."""
    total_timesteps: int = 500_000
    """Environment steps over all parallel environments."""
    num_envs: int = 4
    """Parallel environments."""
    learning_rate: float = 2.5e-4
    anneal_lr: bool = False
    """Anneal the learning rate linearly to zero over the run."""
    gamma: float = 0.99
    """Discount factor."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden widths of the network's MLPs."""
    log_interval: int = 10
    """Updates per logged metrics row."""

    @property
    def steps_per_update(self) -> int:
        """Environment steps (over all environments) in one training update."""
        return self.num_envs

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update

    def check(self, checks: ConfigChecks) -> None:
        """Add this config's problems to `checks`. Properties used here must not divide by a
        field that may be zero before that field has been checked."""
        checks.representable()
        checks.positive("total_timesteps", "num_envs", "log_interval", "learning_rate")
        checks.in_unit_interval("gamma")
        checks.require(
            all(size > 0 for size in self.hidden_sizes),
            f"hidden_sizes must be positive, got {self.hidden_sizes}",
        )
        if self.max_episode_steps is not None:
            checks.positive("max_episode_steps")

    def validate(self) -> None:
        """Raise one `ValueError` naming every setting that cannot train, before anything compiles."""
        checks = ConfigChecks(self)
        self.check(checks)
        checks.raise_if_any()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
