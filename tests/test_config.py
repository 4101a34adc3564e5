import dataclasses
import re

import pytest

from pureeqxrl import registry, runs
from pureeqxrl.config import ConfigChecks, TrainConfig, typed_values


@dataclasses.dataclass(frozen=True)
class _WithBatch(TrainConfig):
    batch_size: int = 8

    def check(self, checks: ConfigChecks) -> None:
        super().check(checks)
        checks.positive("batch_size")
        checks.require(self.batch_size <= 64, f"batch_size ({self.batch_size}) is over 64")


def test_checks_report_every_problem_at_once_in_one_error():
    config = TrainConfig(num_envs=0, gamma=1.5, learning_rate=-1.0, hidden_sizes=(64, 0))
    with pytest.raises(ValueError) as error:
        config.validate()
    message = str(error.value)
    assert message.startswith("Invalid TrainConfig: ")
    for problem in (
        "num_envs must be positive, got 0",
        "learning_rate must be positive, got -1.0",
        "gamma must be in [0, 1], got 1.5",
        "hidden_sizes must be positive, got (64, 0)",
    ):
        assert problem in message
    assert message.count(";") == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": float("inf")}, "learning_rate must be finite, got inf"),
        ({"learning_rate": float("nan")}, "learning_rate must be finite, got nan"),
        ({"gamma": float("nan")}, r"gamma must be finite, got nan$"),
        ({"max_episode_steps": 10**11}, r"max_episode_steps \(100000000000\) is past 2,147,483,647"),
        ({"total_timesteps": 2**31}, r"total_timesteps \(2147483648\) is past"),
        ({"hidden_sizes": (64, 2**40)}, r"hidden_sizes \(1099511627776\) is past"),
        ({"max_episode_steps": 0}, "max_episode_steps must be positive"),
        ({"total_timesteps": 0}, "total_timesteps must be positive"),
        ({"log_interval": -1}, "log_interval must be positive"),
    ],
)
def test_base_rules(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change).validate()


def test_subclasses_add_their_rules_to_the_base_ones():
    _WithBatch().validate()
    with pytest.raises(ValueError) as error:
        _WithBatch(batch_size=100, num_envs=0).validate()
    assert "num_envs must be positive" in str(error.value)
    assert "batch_size (100) is over 64" in str(error.value)
    assert str(error.value).startswith("Invalid _WithBatch: ")


def test_checks_helpers():
    config = _WithBatch(batch_size=0)
    checks = ConfigChecks(config)
    checks.positive("batch_size")
    checks.non_negative("batch_size")
    checks.in_unit_interval("gamma")
    checks.require(True, "never reported")
    assert checks.errors == ["batch_size must be positive, got 0"]
    ConfigChecks(config).raise_if_any()  # nothing found, nothing raised


def test_every_algorithm_config_extends_the_base_under_one_naming_and_its_defaults_are_valid():
    for name, algorithm in registry.ALGORITHMS.items():
        config = algorithm.config_cls()
        assert isinstance(config, TrainConfig), name
        names = {field.name for field in dataclasses.fields(config)}
        assert not names & set(runs.RENAMED_FIELDS), name  # old names stay old
        config.validate()


def test_values_from_a_file_are_checked_against_the_field_types():
    from pureeqxrl.ppo_rnn import PPORNNConfig

    values = {
        "learning_rate": "3e-4",  # YAML 1.1 reads 3e-4 as a string
        "total_timesteps": 1e6,  # JSON and YAML write 1e6 as a float
        "hidden_sizes": [32, 32],
        "max_episode_steps": None,
        "cell": "s5",
        "anneal_lr": True,
    }
    typed = typed_values(PPORNNConfig, values)
    assert typed == {**values, "learning_rate": 3e-4, "total_timesteps": 1_000_000, "hidden_sizes": (32, 32)}
    assert type(typed["total_timesteps"]) is int
    for name, bad, message in [
        ("learning_rate", "abc", "learning_rate must be float, got 'abc'"),
        ("total_timesteps", 1.5, "total_timesteps must be int, got 1.5"),
        ("num_envs", True, "num_envs must be int, got True"),
        ("anneal_lr", "yes", "anneal_lr must be bool, got 'yes'"),
        ("hidden_sizes", 64, "hidden_sizes must be tuple"),
        ("hidden_sizes", [64, "a"], "hidden_sizes must be int, got 'a'"),
        ("cell", "lstm", "cell must be 'gru' or 's5', got 'lstm'"),
        ("max_episode_steps", "x", "max_episode_steps must be int, got 'x'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            typed_values(PPORNNConfig, {name: bad})
