"""The benchmark scripts run and write what the README's tables are made of (no timing is asserted:
timings belong in `benchmarks/results`, not in tests)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pureeqxrl import registry
from pureeqxrl.dqn import DQNConfig
from pureeqxrl.sac import SACConfig

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(monkeypatch, name: str, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/<name>.py` has it (bench_io)
    load(name).main()


@pytest.mark.slow
def test_end_to_end_and_chart_write_tables_json_and_png(tmp_path, monkeypatch):
    config = DQNConfig(total_timesteps=12_000)
    steps = config.num_updates * config.steps_per_update
    assert steps >= 12_000
    out = tmp_path / "dqn_test"
    run_script(
        monkeypatch,
        "end_to_end",
        "--algo",
        "dqn",
        "--repeats",
        "2",
        "--seeds",
        "1",
        "2",
        "--total-timesteps",
        "12000",
        "--out",
        str(out),
    )
    data = json.loads(out.with_suffix(".json").read_text())
    assert [row["num_seeds"] for row in data["rows"]] == [1, 2]
    for row in data["rows"]:
        for library in ("equinox", "linen"):
            assert row[library]["train_s"] > 0 and row[library]["compile_s"] > 0
            for sample in data["samples"][f"{library}/{row['num_seeds']}"]:
                # steps/s counts every seed's environment steps.
                assert sample["steps_per_s"] == pytest.approx(
                    steps * row["num_seeds"] / sample["train_s"], rel=1e-6
                )
        for quantity in ("compile", "train"):
            low, high = row[f"{quantity}_time_ratio_min_max"]
            assert 0 < low <= row[f"{quantity}_time_ratio_median"] <= high
    # Two repeats, both libraries each time, for each number of seeds.
    assert {key: len(samples) for key, samples in data["samples"].items()} == {
        "equinox/1": 2,
        "linen/1": 2,
        "equinox/2": 2,
        "linen/2": 2,
    }
    table = out.with_suffix(".md").read_text()
    assert "--seeds 1 2" in table and table.count("| equinox |") == 2 and table.count("| linen |") == 2

    run_script(monkeypatch, "chart", "--results", str(tmp_path), "--suffix", "test")
    png = tmp_path / "ratios_test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_says_when_there_is_nothing_to_draw(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="no benchmark JSON"):
        run_script(monkeypatch, "chart", "--results", str(tmp_path), "--suffix", "cpu")


@pytest.mark.slow
def test_sweep_benchmark_trains_the_same_runs_both_ways(tmp_path, monkeypatch):
    out = tmp_path / "sweeps_test"
    run_script(
        monkeypatch, "sweeps", "--algo", "ppo", "--configs", "2", "--seeds", "2", "--repeats", "1",
        "--total-timesteps", "4096", "--out", str(out),
    )  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    one, separate = data["samples"]["one_program"][0], data["samples"]["separate_programs"][0]
    # The sweep and the separate programs train the same runs: the same final returns.
    assert one["final_return"] == pytest.approx(separate["final_return"], rel=1e-6)
    assert one["final_return"][0] != one["final_return"][1]  # two learning rates, two results
    table = out.with_suffix(".md").read_text()
    assert "| compile + train |" in table and "2 learning rates x 2 seeds" in table


@pytest.mark.slow
def test_scaling_benchmark_measures_every_layout_of_four_devices(tmp_path):
    out = tmp_path / "scaling_test"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    command = [sys.executable, str(BENCHMARKS / "scaling.py"), "--algo", "ppo", "--seeds-per-device", "1"]
    command += ["--envs-per-device", "4", "--updates", "2", "--repeats", "1", "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    layouts = [(row["mode"], row["devices"], row["runs"], row["envs_per_run"]) for row in results]
    assert layouts == [
        ("seeds", 1, 1, 4), ("seeds", 2, 2, 4), ("seeds", 4, 4, 4),
        ("data parallel", 1, 1, 4), ("data parallel", 2, 1, 8), ("data parallel", 4, 1, 16),
    ]  # fmt: skip
    assert all(row["steps_per_second"] > 0 for row in results)
    assert [row["efficiency"] for row in results if row["devices"] == 1] == [1.0, 1.0]
    assert "A correctness run, not a scaling claim" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_throughput_benchmark_compares_algorithms(tmp_path, monkeypatch):
    out = tmp_path / "throughput_test"
    run_script(
        monkeypatch, "throughput", "--algos", "pqn", "dqn", "--seeds", "1", "--updates", "2", "20",
        "--repeats", "2", "--out", str(out),
    )  # fmt: skip
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [(row["algo"], row["seeds"]) for row in results] == [("pqn", 1), ("dqn", 1)]
    # A chunk of PQN is 2 updates of 32 x 64 steps; of DQN 20 updates of 10 environments' steps.
    assert [row["env_steps"] for row in results] == [2 * 32 * 64, 20 * 10]
    assert results[0]["ratio_to_first"] == 1.0 and all(len(row["seconds"]) == 2 for row in results)


def test_throughput_variants_are_presets_with_changed_fields(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_io
    throughput = load("throughput")
    algorithm, config = throughput.variant_config("pqn@minatar,torso=mlp,hidden_sizes=256x256,num_envs=64")
    assert algorithm is registry.get("pqn")
    assert (config.env, config.q_lambda, config.num_steps) == ("Breakout-MinAtar", 0.65, 32)  # the preset
    assert (config.torso, config.hidden_sizes, config.num_envs) == ("mlp", (256, 256), 64)  # the changes
    _, config = throughput.variant_config("sac,learn_alpha=false,tau=0.01")
    assert config == SACConfig(learn_alpha=False, tau=0.01)
    with pytest.raises(ValueError, match="num_envs must be int, got 'many'"):
        throughput.variant_config("dqn,num_envs=many")


@pytest.mark.slow
def test_versions_benchmark_times_a_commit_against_this_tree(tmp_path, monkeypatch):
    out = tmp_path / "versions_test"
    run_script(
        monkeypatch, "versions", "--baseline", "HEAD", "--algos", "ppo", "--seeds", "2",
        "--repeats", "2", "--total-timesteps", "2048", "--out", str(out),
    )  # fmt: skip  # one row, two repeats: each version runs first once
    data = json.loads(out.with_suffix(".json").read_text())
    assert [(row["algo"], row["num_seeds"]) for row in data["rows"]] == [("ppo", 2)]
    assert all(len(samples) == 2 for samples in data["samples"].values())  # both versions, each repeat
    last = data["rows"][-1]
    assert last["old_returns"]["runs"] == last["new_returns"]["runs"] == 4  # 2 seeds x 2 repeats
    assert "intervals overlap" in out.with_suffix(".md").read_text()
    # --compile-only: the compile columns alone, no run trained (no train time, no returns)
    run_script(
        monkeypatch, "versions", "--baseline", "HEAD", "--algos", "ppo", "--seeds", "2",
        "--repeats", "1", "--total-timesteps", "2048", "--compile-only", "--out", str(out),
    )  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    assert [set(sample) for samples in data["samples"].values() for sample in samples] == [
        {"compile_s", "devices"}
    ] * 2
    assert set(data["rows"][0]) == {"algo", "num_seeds", "new_compile_s", "old_compile_s"} | {
        "compile_s_ratio",
        "compile_s_ratio_min_max",
    }
    table = out.with_suffix(".md").read_text()
    assert "| compile s old | compile s new |" in table and "train" not in table.split("|", 1)[1]


def test_versions_takes_a_baseline_checkout_made_elsewhere(tmp_path, monkeypatch):
    """`--baseline-tree` (for a machine without the history) is used as given, with its label, and
    a folder without the package is refused in one line."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_io
    versions = load("versions")
    root = BENCHMARKS.parent
    assert versions.baseline("717c28d", root) == ("717c28d", root.resolve())
    with pytest.raises(SystemExit, match="holds no pureeqxrl package"):
        versions.baseline("717c28d", tmp_path)


def test_a_measurement_runs_with_the_xla_flags_it_is_given(monkeypatch):
    """`measure`'s `xla_flags` become the measuring process's `XLA_FLAGS`: a flag XLA does not
    know ends that process (the error names it), where the same measurement without it would run."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_io
    versions = load("versions")
    with pytest.raises(RuntimeError, match="xla_cpu_no_such_flag"):
        versions.measure(
            BENCHMARKS.parent, "ppo", 1, 0, {"total_timesteps": 512}, "command", "--xla_cpu_no_such_flag"
        )


@pytest.mark.slow
def test_xla_flags_benchmark_compares_each_variant_with_the_default(tmp_path, monkeypatch):
    out = tmp_path / "xla_flags_test"
    run_script(
        monkeypatch, "xla_flags", "--algos", "ppo", "--seeds", "1", "--repeats", "2",
        "--total-timesteps", "2048", "--variants", "fast-compile preset", "--out", str(out),
    )  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    assert [(row["algo"], row["variant"]) for row in data["rows"]] == [("ppo", "fast-compile preset")]
    assert {key: len(runs) for key, runs in data["samples"].items()} == {
        "ppo/default": 2,
        "ppo/fast-compile preset": 2,
    }
    assert "CPU_OPT_PRESET_FAST_COMPILE" in out.with_suffix(".md").read_text()


def test_ablation_switches_turn_off_what_they_name(monkeypatch):
    """Each switch of `benchmarks/ablation.py` (patched through `monkeypatch`, so nothing leaks)."""
    import dataclasses

    import gymnax
    import jax
    import jax.numpy as jnp
    import numpy as np
    from distreqx.distributions import Categorical

    from pureeqxrl import dqn, envs, heads, policy_gradient, ppo, registry, replay
    from pureeqxrl.envs import Step

    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_io
    ablation = load("ablation")
    switch = lambda name, algo="ppo": ablation.switch_off(name, algo, monkeypatch.setattr)  # noqa: E731

    done = jnp.array([True, False])
    step = Step(jnp.ones(2), done, jnp.zeros(2, bool), jnp.zeros((2, 4)), jnp.full(2, 7.0), jnp.full(2, 3.0))
    totals = envs.no_finished_episodes(2)
    assert envs.add_finished_episodes(totals, step).tolist() == [[7.0, 0.0], [3.0, 0.0], [1.0, 0.0]]
    assert dqn.episode_stats(step)["episode_return"][0] == 7.0
    switch("no_episode_stats")
    assert not envs.add_finished_episodes(totals, step).any()
    switch("no_episode_stats", "dqn")
    assert dqn.episode_stats(step)["episode_return"] == (0.0, 0.0)

    switch("no_diagnostics")
    batch = policy_gradient.Batch(
        obs=jnp.zeros((4, 1)), action=jnp.zeros(4, jnp.int32), log_prob=jnp.full(4, -2.0),
        value=jnp.zeros(4), advantage=jnp.arange(4.0), target=jnp.ones(4),
    )  # fmt: skip
    _, info = policy_gradient.loss_terms(
        Categorical(logits=jnp.zeros((4, 2))), jnp.zeros(4), batch, ppo.PPOConfig()
    )
    assert info.approx_kl == 0.0 and info.clip_fraction == 0.0 and info.value_loss > 0.0

    switch("no_bootstrap_value")
    rollout = policy_gradient.Transition(
        obs=None, action=None, log_prob=None, value=jnp.array([[1.0], [2.0], [3.0]]), reward=jnp.zeros((3, 1)),
        terminated=jnp.zeros((3, 1), bool), done=jnp.zeros((3, 1), bool), next_obs=None,
    )  # fmt: skip
    config = ppo.PPOConfig(gamma=0.5, gae_lambda=0.0)
    advantages, _ = ppo.rollout_advantages(rollout, jnp.full((3, 1), 100.0), config)
    # V(obs[t + 1]) instead of the given next values (the last step reuses its own value)
    np.testing.assert_allclose(advantages[:, 0], [0.5 * 2 - 1, 0.5 * 3 - 2, 0.5 * 3 - 3])
    network = ppo.Functional(init=None, apply=lambda params, obs: (None, obs.sum(-1)))  # V = the row's sum
    rollout = dataclasses.replace(rollout, obs=jnp.ones((3, 1, 2)), next_obs=jnp.full((3, 1, 2), 9.0))
    value, next_value = ppo.rollout_values(network, None, rollout)  # the observations' values alone
    assert value.tolist() == [[2.0], [2.0], [2.0]] and next_value is None

    switch("no_reset_every_step")
    env, params = gymnax.make("CartPole-v1")
    obs, state = env.reset(jax.random.key(0), params)
    for _ in range(40):  # pushing one way tips the pole over well within 40 steps
        obs, state, _, terminated, _, info = env.step(jax.random.key(1), state, 1, params)
    assert terminated and state.time == 40  # no reset happened: the episode's clock ran on

    assert switch("no_normalization", "ppo_continuous") == {"normalize_obs": False, "normalize_reward": False}
    assert switch("one_log_row", "dqn") == {"log_interval": dqn.DQNConfig(total_timesteps=50_000).num_updates}
    scan = jax.lax.scan
    switch("rollout_unroll_4")
    assert jax.lax.scan is not scan
    with pytest.raises(ValueError, match="unknown switch"):
        switch("no_such_switch")

    for algo in ("ppo", "ppo_continuous"):  # one matrix product per layer, the same function
        config = registry.get(algo).config_cls()
        env = ppo.make_environment(config)
        separate = ppo.actor_critic(config, env)
        params = separate.init(jax.random.key(0))
        obs = jax.random.normal(jax.random.key(1), (16, *env.observation_shape))
        switch("fused_actor_critic", algo)
        fused = ppo.actor_critic(config, env)
        dots = lambda apply: str(jax.make_jaxpr(apply)(params, obs)).count("dot_general")  # noqa: E731
        assert (dots(separate.apply), dots(fused.apply)) == (6, 3)
        (policy, value), (fused_policy, fused_value) = separate.apply(params, obs), fused.apply(params, obs)
        np.testing.assert_allclose(fused_value, value, rtol=1e-5, atol=1e-6)
        action = heads.sample(policy, jax.random.key(2))
        np.testing.assert_allclose(
            heads.log_prob(fused_policy, action), heads.log_prob(policy, action), rtol=1e-5
        )
        monkeypatch.undo()
        monkeypatch.syspath_prepend(str(BENCHMARKS))

    leafwise = ppo.make_optimizer(ppo.PPOConfig())
    switch("flat_optimizer")  # one vector for all the parameters, the same update
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.array([1.0, -2.0])}
    flat = ppo.make_optimizer(ppo.PPOConfig())
    assert [x.shape for x in jax.tree.leaves(flat.init(params)) if x.ndim] == [(8,), (8,)]  # Adam's moments
    expected, _ = leafwise.update(grads, leafwise.init(params), params)
    updates, _ = flat.update(grads, flat.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)

    switch("next_obs_from_next_slot", "dqn")
    num_envs = dqn.DQNConfig().num_envs
    buffer = replay.ReplayBuffer.for_steps(jnp.zeros((num_envs, 1)), jnp.array(0), 4 * num_envs)
    for t in range(4):
        obs = jnp.full((num_envs, 1), float(t))
        zeros = jnp.zeros(num_envs)
        buffer = buffer.add(
            replay.Transition(obs, zeros.astype(jnp.int32), zeros, obs + 100.0, zeros.astype(bool))
        )
    assert not buffer.data.next_obs.any()  # never written
    sample = buffer.sample(jax.random.key(0), 64)
    np.testing.assert_array_equal(sample.next_obs, (sample.obs + 1.0) % 4)  # the slot num_envs later


def _event(pid, tid, name, ts, dur, launcher=None):
    event = {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}
    return event if launcher is None else event | {"args": {"hlo_op": launcher}}


def _names(kind, pid, tid, name):
    return {"ph": "M", "name": f"{kind}_name", "pid": pid, "tid": tid, "args": {"name": name}}


def test_trace_summary_counts_each_operations_own_time_once(monkeypatch):
    """`benchmarks/trace_update.py` on made-up traces with known answers: on a GPU, the streams'
    kernels and copies only (not the host, nor the summary line that spans them); on a CPU, XLA's
    threads, with a loop's own time less its body's."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_io
    trace_update = load("trace_update")
    gpu = {
        "traceEvents": [
            _names("process", 1, 0, "/host:CPU"),
            _names("thread", 1, 5, "python"),
            _names("process", 2, 0, "/device:GPU:0"),
            _names("thread", 2, 7, "Stream #13(Compute)"),
            _names("thread", 2, 8, "Stream #14(MemcpyD2H)"),
            _names("thread", 2, 9, "XLA Ops"),
            _event(1, 5, "block_until_ready", 0, 100),  # the host: not an operation
            _event(2, 9, "fusion.1", 10, 50),  # the summary line over the kernels: counted once
            _event(2, 7, "loop_fusion", 10, 20, "command_buffer_1"),
            _event(2, 7, "loop_fusion", 40, 20, "command_buffer_1"),
            _event(
                2, 7, "gemm", 12, 6, "command_buffer_1"
            ),  # a CUDA graph's kernels overlap: neither holds the other
            _event(2, 8, "MemcpyD2H", 55, 10, "copy.3"),  # overlaps the second kernel by 5 us
        ]
    }
    summary = trace_update.summarize(gpu, num_updates=2, wall_s=200e-6, top=10)
    assert summary["threads"] == ["/device:GPU:0 Stream #13(Compute)", "/device:GPU:0 Stream #14(MemcpyD2H)"]
    assert summary["wall_ms_per_update"] == pytest.approx(0.1)
    assert summary["busy_ms_per_update"] == pytest.approx(0.045 / 2)  # 10-30 and 40-65 us
    assert summary["operations_per_update"] == 2.0
    assert [
        (row["name"], row["calls_per_update"], row["us_per_update"]) for row in summary["operations"]
    ] == [
        ("loop_fusion", 1.0, 20.0),
        ("MemcpyD2H", 0.5, 5.0),
        ("gemm", 0.5, 3.0),
    ]
    assert summary["by_calls_per_update"] == [  # by how often they run, the most time first
        {"calls_per_update": 1.0, "operations": 1, "calls": 1.0, "us": 20.0},
        {"calls_per_update": 0.5, "operations": 2, "calls": 1.0, "us": 8.0},
    ]
    assert summary["by_launcher"] == [  # what each command buffer (a loop's body) launched, per update
        {"launcher": "command_buffer_1", "calls": 1.5, "us": 23.0},
        {"launcher": "copy.3", "calls": 0.5, "us": 5.0},
    ]
    cpu = {
        "traceEvents": [
            _names("process", 1, 0, "/host:CPU"),
            _names("thread", 1, 3, "tf_XLAEigen/123"),
            _names("thread", 1, 4, "python"),
            _event(1, 3, "while.7", 0, 100),  # a loop holding two iterations of its body
            _event(1, 3, "dot.1", 10, 30),
            _event(1, 3, "dot.1", 50, 30),
            _event(1, 3, "sort.2", 120, 10),
            _event(1, 4, "ThunkExecutor::Execute", 0, 200),
        ]
    }
    summary = trace_update.summarize(cpu, num_updates=1, wall_s=200e-6, top=2)
    assert summary["threads"] == ["/host:CPU tf_XLAEigen/123"]
    assert summary["busy_ms_per_update"] == pytest.approx(0.110)
    assert summary["distinct_operations"] == 3 and len(summary["operations"]) == 2  # the top 2
    assert [(row["name"], row["us_per_update"]) for row in summary["operations"]] == [
        ("dot.1", 60.0),
        ("while.7", 40.0),
    ]


def test_rollout_ops_counts_the_rollout_steps_operations(tmp_path, monkeypatch):
    """`benchmarks/rollout_ops.py`: on made-up HLO, the loop of the asked length and its operations
    by kind; on PPO's real training program, the rollout's step stores each of its outputs (no
    per-step episode statistics among them: the rollout carries those)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_io
    rollout_ops = load("rollout_ops")
    trips = 'backend_config={"known_trip_count":{"n":"%d"}}'
    hlo = "\n".join(
        [
            "%body.1 (p: (s32[], f32[4])) -> (s32[], f32[4]) {",
            "  %a = f32[4]{0} get-tuple-element(%p), index=1",
            "  %f = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_add",
            "  %s = f32[9,4]{1,0} fusion(%f), kind=kLoop, calls=%fused_stack",
            "  %m = f32[4]{0} fusion(%a), kind=kCustom, calls=%fused_product",
            "  %c = f32[4]{0} copy(%f)",
            "}",
            "%fused_add (x: f32[4]) -> f32[4] {",
            "  %y = f32[4]{0} add(%x, %x)",
            "}",
            "%fused_stack (x: f32[4]) -> f32[9,4] {",
            "  %z = f32[9,4]{1,0} dynamic-update-slice(%b, %x, %i, %j)",
            "}",
            "%fused_product (x: f32[4]) -> f32[4] {",
            "  %d = f32[4]{0} dot(%x, %w), lhs_contracting_dims={0}",
            "}",
            "%other (p: (s32[], f32[4])) -> (s32[], f32[4]) {",
            "  %d = f32[4]{0} copy(%p)",
            "}",
            "ENTRY %main (x: f32[4]) -> f32[4] {",
            "  %w = (s32[], f32[4]) while(%t), condition=%cond, body=%body.1, " + trips % 9,
            "  %v = (s32[], f32[4]) while(%t), condition=%cond, body=%other, " + trips % 3,
            "}",
        ]
    )
    bodies = rollout_ops.computations(hlo)
    (body,) = rollout_ops.loop_bodies(bodies, 9)
    assert rollout_ops.count_operations(body, bodies) == {
        "fusion": 3,
        "stacked outputs": 1,
        "matrix products": 1,
        "copy": 1,
    }
    assert rollout_ops.loop_bodies(bodies, 5) == []

    counts = rollout_ops.rollout_operations("ppo", num_seeds=1)
    # obs, next obs, action, log-prob, reward, terminated, truncated: 7 stacked outputs; the actor's
    # 3 layers alone (the critic's values are computed after the rollout, in one batch)
    assert counts["stacked outputs"] == 7 and counts["matrix products"] == 3, counts
    # a gradient step: both MLPs' 6 layers forward, and their kernels' gradients backward
    step = rollout_ops.rollout_operations("ppo", num_seeds=1, gradient_step=True)
    assert step["matrix products"] >= 12, step
    run_script(monkeypatch, "rollout_ops", "--algos", "ppo", "--seeds", "1", "--out", str(tmp_path / "ops"))
    assert "| ppo | " in (tmp_path / "ops.md").read_text()
