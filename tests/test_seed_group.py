"""Seed groups (train.core.loop.train_seed_group, the sweep's --seeds-together): the seeds of one
pooler trained as one vmapped program, each in its own run directory, with the metrics of its
separate run."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_gradients_close, run_on_cpu_devices

from configs import digits
from train.core import device_loop, input_pipeline, loop
from train.study import runner
from train.study.plan import entries, make_config, plan_entry

TIMING_KEYS = {"train_seconds", "eval_seconds", "epoch_seconds", "images_per_second"}


def _config(**fields):
    config = digits.get_config()
    config.update(progress=False, pooler="stochastic", num_epochs=1, batch_size=32)
    config.update(fields)
    return config


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _summary(workdir) -> dict:
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def _assert_same_metrics(got: dict, want: dict) -> None:
    """Equal up to float rounding and what it leads to over an epoch: a vmapped program may sum
    in another order than the separate one, and in a stochastic pooler a last-bit difference can
    flip a sample, after which the two trajectories drift apart.  The programs run at the highest
    matmul precision (with TF32 convolutions, a GPU's default emulated on CPU, the test losses
    drifted 0.25% apart, accuracies 4.7 points).  The tolerance depends on the backend:

    - on CPU the two programs agree nearly bitwise (1e-8 apart in most runs, 4e-4 in one):
      losses to 0.2%, accuracies to 2 points;
    - elsewhere the vmapped convolutions are grouped convolutions summed in another order at
      every step, and Adam amplifies that noise for gradients near 0: with +-2**-24 of the
      largest gradient added to every gradient each step (on CPU, one epoch with stochastic,
      TDGS or max pooling), the test loss moved up to 2.6% and the accuracy 5.3 points.  Losses to 5%, accuracies to 10 points; the
      numerics are held tightly by the first step's gradients
      (:func:`test_a_groups_first_step_is_each_seeds_separate_first_step`)."""
    loss_rtol, accuracy_atol = (2e-3, 0.02) if jax.default_backend() == "cpu" else (5e-2, 0.1)
    assert got["epoch"] == want["epoch"] and got["step"] == want["step"]
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose(got[key], want[key], rtol=loss_rtol, err_msg=key)
    for key in ("train_accuracy", "test_accuracy"):
        assert abs(got[key] - want[key]) <= accuracy_atol, key


def _assert_seeds_differ(first: dict, second: dict) -> None:
    """Two seeds' losses differ by more than 1%, five times the CPU tolerance of
    :func:`_assert_same_metrics`, so that check would notice swapped or shared seeds on CPU
    (elsewhere its tolerance is wider, and the first-step test tells the seeds apart).  How far
    two seeds land apart is itself random: with the reference paths (what a GPU or TPU runs)
    seeds 3 and 0 ended 1.5% apart in test loss, with CPU's fast paths further."""
    apart = max(abs(first[k] - second[k]) / first[k] for k in ("train_loss", "test_loss"))
    assert apart > 1e-2, apart


@pytest.fixture(scope="module")
def data():
    return input_pipeline.load("digits")


@pytest.mark.slow
@pytest.mark.usefixtures("highest_precision")  # see _assert_same_metrics
def test_each_seed_of_a_group_has_the_metrics_of_its_separate_run(tmp_path, data):
    # A stochastic pooler: each seed must draw its own data order and pooling noise.
    seeds = (3, 0)
    separate = [
        loop.train_and_evaluate(_config(seed=s), str(tmp_path / f"alone{s}"), data=data)
        for s in seeds
    ]
    seen = []
    grouped = loop.train_seed_group(
        [_config(seed=s) for s in seeds],
        [str(tmp_path / f"group{s}") for s in seeds],
        data=data,
        on_epoch=lambda i, row: seen.append((i, row["epoch"])),
    )
    assert sorted(seen) == [(0, 1), (1, 1)]
    for seed, alone, together in zip(seeds, separate, grouped, strict=True):
        _assert_same_metrics(together, alone)
        assert together["seeds_in_program"] == 2 and alone["seeds_in_program"] == 1
        workdir = tmp_path / f"group{seed}"
        assert _rows(workdir) == [together]
        summary = _summary(workdir)
        assert (summary["status"], summary["seed"], summary["final"]) == ("done", seed, together)
        with open(workdir / "config.json") as f:
            assert json.load(f)["seed"] == seed
        assert os.path.exists(workdir / "pooler_params.json")
        # Each run's checkpoint is its own: a separate rerun of it finds the run finished.
        assert loop.train_and_evaluate(_config(seed=seed), str(workdir), data=data) == together
    _assert_seeds_differ(*separate)


class _FirstChunkDone(Exception):
    pass


@pytest.mark.usefixtures("highest_precision")
def test_a_groups_first_step_is_each_seeds_separate_first_step(tmp_path, data, monkeypatch):
    """The numerics of a seed group on any backend: its first step (initialisation, first batch
    of the seed's data order, pooling noise) against each seed's separate first step, by their
    gradients in full float32 (:func:`conftest.assert_gradients_close`; a GPU computes the vmapped
    convolutions as grouped ones, in another order).  A stochastic pooler: the noise must be the
    seed's own."""
    real_chunk, states = loop._run_chunk, []

    def first_chunk(*args, **kwargs):
        state, out = real_chunk(*args, **kwargs)
        states.append((jax.device_get(state), np.asarray(out["loss"])))
        raise _FirstChunkDone

    monkeypatch.setattr(loop, "_run_chunk", first_chunk)
    seeds = (3, 0)
    for s in seeds:
        with pytest.raises(_FirstChunkDone):
            config = _config(seed=s, steps_per_chunk=1)
            loop.train_and_evaluate(config, str(tmp_path / f"alone{s}"), data=data)
    with pytest.raises(_FirstChunkDone):
        configs = [_config(seed=s, steps_per_chunk=1) for s in seeds]
        loop.train_seed_group(configs, [str(tmp_path / f"group{s}") for s in seeds], data=data)
    (*alone, (group, group_losses)) = states
    for i, (state, losses) in enumerate(alone):
        in_group = jax.tree_util.tree_map(lambda a, i=i: a[i], group)
        assert int(in_group.step) == int(state.step) == 1
        np.testing.assert_allclose(group_losses[i][:1], losses[:1], rtol=1e-5)
        assert_gradients_close(in_group, state)
    with pytest.raises(AssertionError):  # the two seeds' first steps really differ
        assert_gradients_close(alone[0][0], alone[1][0])


@pytest.mark.slow
def test_a_stopped_group_resumes_to_the_uninterrupted_metrics(tmp_path, data, caplog):
    seeds = (0, 1)
    whole = loop.train_seed_group(
        [_config(seed=s, num_epochs=2, steps_per_chunk=4) for s in seeds],
        [str(tmp_path / f"whole{s}") for s in seeds],
        data=data,
    )
    dirs = [str(tmp_path / f"stopped{s}") for s in seeds]
    stopped = [_config(seed=s, num_epochs=2, steps_per_chunk=4, stop_after_epochs=1) for s in seeds]
    loop.train_seed_group(stopped, dirs, data=data)
    assert [_summary(d)["status"] for d in dirs] == ["stopped", "stopped"]
    # One of them resumed alone: another program, whose rounding differs; said, as for other
    # devices or micro-batches.
    apart = str(tmp_path / "apart")
    shutil.copytree(dirs[0], apart)
    loop.train_and_evaluate(_config(seed=0, num_epochs=2, steps_per_chunk=4), apart, data=data)
    assert "1 seed in one program, where the run trained with" in caplog.text
    assert "2 seeds in one program" in caplog.text
    resumed = loop.train_seed_group(
        [_config(seed=s, num_epochs=2, steps_per_chunk=4) for s in seeds], dirs, data=data
    )

    # The same programs from the same checkpoint: equal, not only close.
    def strip(row):
        return {k: v for k, v in row.items() if k not in TIMING_KEYS | {"includes_startup"}}

    assert [strip(r) for r in resumed] == [strip(r) for r in whole]
    for d, w in zip(dirs, whole, strict=True):
        assert [strip(r) for r in _rows(d)][-1] == strip(w) and len(_rows(d)) == 2


@pytest.mark.slow
def test_a_seed_whose_loss_is_not_finite_fails_alone(tmp_path, data, monkeypatch):
    real_chunk = loop._run_chunk

    def poison_second_seed(*args, **kwargs):
        state, out = real_chunk(*args, **kwargs)
        return state, {**out, "loss": out["loss"].at[1].multiply(jnp.nan)}

    monkeypatch.setattr(loop, "_run_chunk", poison_second_seed)
    dirs = [str(tmp_path / f"s{s}") for s in (0, 1)]
    outcomes = loop.train_seed_group([_config(seed=s) for s in (0, 1)], dirs, data=data)
    assert isinstance(outcomes[1], loop.NonFiniteLossError)
    assert "non-finite training loss (nan) at epoch 1, step 1 of" in str(outcomes[1])
    assert outcomes[0]["epoch"] == 1
    assert _summary(dirs[0])["status"] == "done"
    assert _summary(dirs[1])["status"] == "failed" and _rows(dirs[1]) == []


def test_a_seed_of_a_group_gets_host_values_of_the_types_a_separate_run_gets():
    # 0-d arrays, not NumPy scalars: orbax-checkpoint before 0.11.26 cannot save those, and
    # pyproject allows 0.11.17.
    one = {"step": jnp.asarray(3, jnp.int32), "params": {"w": jnp.ones((2,), jnp.float32)}}
    group = jax.tree_util.tree_map(lambda a: jnp.stack([a, a + 1]), one)
    alone = jax.device_get(one)
    for i in range(2):
        got = loop._index(jax.device_get(group), i)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(alone)
        for g, a in zip(
            jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(alone), strict=True
        ):
            assert (type(g), g.dtype, g.shape) == (type(a), a.dtype, a.shape)
        assert int(got["step"]) == 3 + i


def test_a_group_needs_distinct_seeds_and_otherwise_equal_configs(tmp_path):
    with pytest.raises(ValueError, match="distinct seeds, got \\[1, 1\\]"):
        loop.train_seed_group([_config(seed=1), _config(seed=1)], ["a", "b"])
    with pytest.raises(ValueError, match="differ in learning_rate, not only seed"):
        loop.train_seed_group([_config(seed=0), _config(seed=1, learning_rate=0.5)], ["a", "b"])
    with pytest.raises(ValueError, match="one workdir per config"):
        loop.train_seed_group([_config(seed=0)], ["a", "b"])


def test_runs_at_different_positions_are_grouped_apart(tmp_path):
    plans = [
        plan_entry(e, make_config(e, epochs=2), str(tmp_path))
        for e in entries(["max", "tdgs"], ["digits"], 3)
    ]
    # Seed 2 of max has a checkpoint: it resumes alone.
    (resuming,) = [p for p in plans if p.entry.name() == "digits/max/s2"]
    os.makedirs(os.path.join(resuming.run_dir, "checkpoints", "22"))
    groups = runner.group_plans(plans, together=True)
    names = sorted(sorted(p.entry.name() for p in g) for g in groups)
    assert names == [
        ["digits/max/s0", "digits/max/s1"],
        ["digits/max/s2"],
        ["digits/tdgs/s0", "digits/tdgs/s1", "digits/tdgs/s2"],
    ]
    assert [len(g) for g in runner.group_plans(plans, together=False)] == [1] * 6


@pytest.mark.slow
def test_runs_at_different_positions_are_refused_before_training(tmp_path, data):
    dirs = [str(tmp_path / f"s{s}") for s in (0, 1)]
    loop.train_and_evaluate(_config(seed=0, num_epochs=2, stop_after_epochs=1), dirs[0], data=data)
    before = _rows(dirs[0])
    step = before[0]["step"]
    with pytest.raises(
        loop.PositionMismatch,
        match=rf"different positions \(.*s0: epoch 1, checkpoint step {step}, .*s1: epoch 0, no "
        r"checkpoint\)",
    ):
        loop.train_seed_group([_config(seed=s, num_epochs=2) for s in (0, 1)], dirs, data=data)
    assert _rows(dirs[0]) == before and _rows(dirs[1]) == []
    # A run whose files its restore refuses (here a metrics.jsonl emptied beside its checkpoint)
    # is refused alone, named by its index: the group's other runs can train without it.
    loop.train_and_evaluate(_config(seed=1, num_epochs=2, stop_after_epochs=1), dirs[1], data=data)
    with open(os.path.join(dirs[1], "metrics.jsonl"), "w"):
        pass
    with pytest.raises(loop.RunRefused, match=r"metrics\.jsonl holds none of them") as refused:
        loop.train_seed_group([_config(seed=s, num_epochs=2) for s in (0, 1)], dirs, data=data)
    assert refused.value.index == 1


@pytest.mark.slow
def test_a_sweep_decodes_each_dataset_once_and_compiles_once_per_shape(tmp_path, monkeypatch):
    loads = []
    real_load = input_pipeline.load

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(input_pipeline, "load", counting_load)
    plans = [
        plan_entry(e, make_config(e, epochs=1, batch_size=40), str(tmp_path))
        for e in entries(["avg"], ["digits"], 3)
    ]
    compiled = []

    def count_programs(index, row):
        del index, row
        compiled.append(device_loop.train_chunk._cache_size())

    monkeypatch.setattr(runner, "_group_printer", lambda group: count_programs)
    outcome = runner.sweep(plans, str(tmp_path), seeds_together=False)
    assert len(outcome["done"]) == 3
    assert len(loads) == 1
    # The first run compiled its chunk program (if no earlier test had); the others reused it.
    assert len(compiled) == 3 and compiled[0] == compiled[1] == compiled[2]


GROUP_ON_8_DEVICES = """
import json, tempfile
import jax
from configs import digits
from train.core import input_pipeline, loop

jax.config.update("jax_default_matmul_precision", "highest")  # as the 1-device test

data = input_pipeline.load("digits")
def config(seed):
    c = digits.get_config()
    c.update(pooler="stochastic", num_epochs=1, seed=seed, progress=False, batch_size=32)
    return c
tmp = tempfile.mkdtemp()
alone = [loop.train_and_evaluate(config(s), f"{tmp}/a{s}", data=data) for s in (3, 0)]
grouped = loop.train_seed_group([config(s) for s in (3, 0)], [f"{tmp}/g{s}" for s in (3, 0)], data=data)
print(json.dumps({"alone": alone, "grouped": grouped}))
"""


@pytest.mark.slow
def test_a_group_on_8_devices_has_the_metrics_of_separate_runs():
    out = json.loads(
        run_on_cpu_devices(GROUP_ON_8_DEVICES, flags="--xla_backend_optimization_level=0")
    )
    for alone, grouped in zip(out["alone"], out["grouped"], strict=True):
        _assert_same_metrics(grouped, alone)
    _assert_seeds_differ(*out["alone"])


@pytest.mark.slow
def test_a_sweep_with_seeds_together_records_and_reports_it(tmp_path, capsys):
    plans = [
        plan_entry(e, make_config(e, epochs=1, batch_size=32), str(tmp_path))
        for e in entries(["max"], ["digits"], 2)
    ]
    outcome = runner.sweep(plans, str(tmp_path), seeds_together=True)
    assert len(outcome["done"]) == 2
    out = capsys.readouterr().out
    assert "2 seeds in one program" in out and "seed 1  epoch 1/1" in out
    for p in plans:
        with open(os.path.join(p.run_dir, "sweep_run.json")) as f:
            record = json.load(f)
        assert (record["status"], record["seeds_in_program"]) == ("done", 2)
        assert _rows(p.run_dir)[0]["seeds_in_program"] == 2
    with open(tmp_path / "report" / "report.md") as f:
        report = f.read()
    assert (
        "2 of 2 runs trained with other seeds in one program (`--seeds-together`; 2 of " in report
    )
    assert "the runs' 2 epochs)" in report


def test_a_run_whose_workdir_is_refused_is_named_before_anything_is_trained(tmp_path):
    dirs = [tmp_path / "s0", tmp_path / "s1"]
    dirs[1].mkdir()
    (dirs[1] / "config.json").write_text("{broken")
    with pytest.raises(loop.RunRefused, match=r"cannot read its config\.json") as raised:
        loop.train_seed_group([_config(seed=s) for s in (0, 1)], [str(d) for d in dirs])
    assert raised.value.index == 1 and not dirs[0].exists()


def test_a_sweep_group_trains_the_seeds_whose_run_directories_are_usable(tmp_path, capsys, caplog):
    plans = [
        plan_entry(e, make_config(e, epochs=1, batch_size=32), str(tmp_path))
        for e in entries(["max"], ["digits"], 3)
    ]
    os.makedirs(plans[1].run_dir)
    with open(os.path.join(plans[1].run_dir, "config.json"), "w") as f:
        f.write("{broken")  # refused by the run's own checks
    os.makedirs(os.path.dirname(plans[2].run_dir), exist_ok=True)
    with open(plans[2].run_dir, "w") as f:
        f.write("")  # the run directory's path is a file: nowhere to record the run
    outcome = runner.sweep(plans, str(tmp_path), seeds_together=True)
    assert [p.entry.seed for p in outcome["done"]] == [0]
    assert sorted(p.entry.seed for p in outcome["failed"]) == [1, 2]
    with open(os.path.join(plans[0].run_dir, "sweep_run.json")) as f:
        assert json.load(f)["status"] == "done"
    with open(os.path.join(plans[1].run_dir, "sweep_run.json")) as f:
        record = json.load(f)
    assert record["status"] == "failed" and record["error_type"] == "ConfigError"
    out = capsys.readouterr().out
    assert "failed digits/max/s2: cannot use" in out and "done digits/max/s0" in out
    assert "Traceback" not in caplog.text
