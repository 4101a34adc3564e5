"""The base every algorithm's config extends, and the checks that run before anything is compiled.

A config is a frozen dataclass of plain Python values: its fields are the CLI's flags (tyro reads
them), its defaults are the reference implementation's, and `validate()` reports every problem at
once, in plain words, before a single array is traced.
"""

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass
from typing import Any, Literal

import jax

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
    eval_interval: int | None = None
    """Evaluate the policy on fresh episodes every this many updates, inside the compiled run (at
    the end of the metrics row that reaches each multiple, and at the last row): the `eval_return`
    column. None: 10 evaluations over the run; 0: none."""
    eval_episodes: int = 16
    """Episodes of each evaluation, played in parallel environments."""

    @property
    def steps_per_update(self) -> int:
        """Environment steps (over all environments) in one training update."""
        return self.num_envs

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update

    @property
    def eval_every(self) -> int:
        """`eval_interval` with None resolved: updates between evaluations (0: none)."""
        return max(1, self.num_updates // 10) if self.eval_interval is None else self.eval_interval

    def check(self, checks: ConfigChecks) -> None:
        """Add this config's problems to `checks`. Properties used here must not divide by a
        field that may be zero before that field has been checked."""
        checks.representable()
        checks.positive("total_timesteps", "num_envs", "log_interval", "learning_rate", "eval_episodes")
        if self.eval_interval is not None:
            checks.non_negative("eval_interval")
        checks.in_unit_interval("gamma")
        checks.require(
            all(size > 0 for size in self.hidden_sizes),
            f"hidden_sizes must be positive, got {self.hidden_sizes}",
        )
        if self.max_episode_steps is not None:
            checks.positive("max_episode_steps")

    def validate(self) -> None:
        """Raise one `ValueError` naming every setting that cannot train, before anything compiles.

        A config holding traced values (a sweep's batch of hyperparameters, inside the compiled
        program) is not checked again: `pureeqxrl.sweep.check_configurations` checked every one
        of its configurations before tracing, and a traced value has no truth value to test."""
        if any(isinstance(value, jax.Array) for value in vars(self).values()):
            return
        checks = ConfigChecks(self)
        self.check(checks)
        checks.raise_if_any()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def typed_values(config_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Config fields read from a file (JSON, YAML), checked against the fields' types: lists become
    tuples, integral floats (`1e6`) integers, numeric strings (YAML 1.1 reads `3e-4` as one) floats;
    anything else of the wrong type is a `ValueError` naming the field."""
    hints = typing.get_type_hints(config_cls)
    return {name: _typed(name, value, hints[name]) for name, value in values.items()}


def _typed(name: str, value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]
        return _typed(name, value, hint)
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(_typed(name, item, args[0]) for item in value)
    if origin is Literal and value in args:
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
    if hint is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    if hint is str and isinstance(value, str):
        return value
    expected = " or ".join(map(repr, args)) if origin is Literal else getattr(hint, "__name__", str(hint))
    raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class RolloutConfig(TrainConfig):
    """A config whose update is a rollout of `num_steps` steps in each of `num_envs` environments,
    learnt from in `update_epochs` epochs of `num_minibatches` minibatches (PPO, PQN)."""

    num_steps: int = 128
    """Steps per environment in one rollout; one update uses num_envs * num_steps transitions."""
    update_epochs: int = 4
    num_minibatches: int = 4
    """Minibatches per epoch; must divide num_envs * num_steps."""

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.steps_per_update // self.num_minibatches

    @property
    def num_gradient_steps(self) -> int:
        return self.num_updates * self.update_epochs * self.num_minibatches

    def check(self, checks: ConfigChecks) -> None:
        super().check(checks)
        checks.positive("num_steps", "update_epochs", "num_minibatches")
        if self.num_envs > 0 and self.num_steps > 0 and self.num_minibatches > 0:
            checks.require(
                self.steps_per_update % self.num_minibatches == 0,
                f"num_minibatches ({self.num_minibatches}) does not divide num_envs * num_steps "
                f"({self.num_envs} * {self.num_steps} = {self.steps_per_update})",
            )
            checks.require(
                self.total_timesteps <= 0 or self.num_updates > 0,
                f"total_timesteps ({self.total_timesteps}) is smaller than one rollout "
                f"(num_envs * num_steps = {self.steps_per_update}): not one update",
            )


def check_replay(checks: ConfigChecks, config: Any) -> None:
    """The rules of a config whose update steps `num_envs` environments once, stores the steps in a
    replay buffer of `buffer_size` transitions and learns from batches of `batch_size` of them once
    `learning_starts` environment steps have been taken (DQN, SAC)."""
    checks.positive("buffer_size", "batch_size")
    checks.non_negative("learning_starts")
    checks.require(
        config.batch_size <= config.buffer_size,
        f"batch_size ({config.batch_size}) is larger than buffer_size ({config.buffer_size})",
    )
    checks.require(
        config.num_envs <= config.buffer_size,
        f"num_envs ({config.num_envs}) is larger than buffer_size ({config.buffer_size}): "
        "one step would overwrite itself",
    )
    if config.num_envs <= 0:  # reported by the base checks; the ones below divide by it
        return
    if config.total_timesteps < config.num_envs:
        checks.require(
            False,
            f"total_timesteps ({config.total_timesteps}) is smaller than num_envs ({config.num_envs}): "
            "not one update",
        )
    else:
        checks.require(
            config.learning_starts < config.num_updates * config.num_envs,
            f"learning_starts ({config.learning_starts}) leaves no step to learn in "
            f"{config.num_updates * config.num_envs} environment steps",
        )
