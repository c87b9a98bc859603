"""Tests of train/core/loop.py: config checks, reports, end-to-end runs, resume, failures."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_gradients_close, drop_a_ctrl_c, held_by_another_process, mock_tfds

from configs import default, digits
from train.core import checkpointing, interrupts, loop, models, run_config, run_files, steps

SHARED_TFDS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tfds"
TIMING_KEYS = {
    "train_seconds",
    "eval_seconds",
    "epoch_seconds",
    "images_per_second",
    "includes_startup",
}
METRIC_KEYS = {"epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy"}


def _config(**fields):
    config = digits.get_config()
    config.progress = False
    config.update(fields)
    return config


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def _summary(workdir) -> dict:
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


# --------------------------------------------------------------------------- fast checks


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("pooler", "median", "unknown pooler 'median'; choose one of: max, avg"),
        ("dataset", "svhn", "unknown dataset 'svhn'; choose one of: mnist"),
        ("batch_size", 0, "batch size must be a positive integer"),
        ("num_epochs", -1, "epochs must be a positive integer"),
        ("learning_rate", 0.0, "learning rate must be a positive finite number"),
        ("learning_rate", 1e-320, r"learning rate must be between 1.175e-38 and 3.403e\+38"),
        ("learning_rate", 1e39, r"learning rate must be between 1.175e-38 and 3.403e\+38"),
        ("seed", -3, "seed must be an integer >= 0"),
        ("steps_per_chunk", 0, "steps_per_chunk must be a positive integer"),
        ("pooler_kwargs", {"window": 2}, "bad pooler_kwargs"),
        ("pooler_kwargs", {"deterministic": True}, "pooler_kwargs cannot set deterministic"),
        ("seed", 2**32, r"seed must be below 2\*\*32"),
        ("implementation", "turbo", "implementation must be one of auto, reference, fast"),
    ],
)
def test_validate_config_names_the_field_and_the_allowed_values(field, value, message):
    config = default.get_config()
    config[field] = value
    with pytest.raises(run_config.ConfigError, match=message):
        run_config.validate_config(config)


def test_64_bit_mode_is_refused():
    # JAX_ENABLE_X64=1: the step's int32 counters met int64 sums (a traceback on CPU), and where
    # it ran the numbers differed from a float32 run's, silently.
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        with pytest.raises(run_config.ConfigError, match=r"^JAX_ENABLE_X64 is on: the CNN trains"):
            run_config.validate_config(_config())
    finally:
        jax.config.update("jax_enable_x64", before)


def test_pooler_kwargs_are_blamed_where_they_are_wrong():
    # An initializer from JSON failed in init ("'int' object is not callable"); blur's bad
    # pad_mode was "does not fit the CNN for digits" (its defaults do not fit 8x8 either).
    with pytest.raises(run_config.ConfigError, match=r"p_init=100 for pooler 'lp': p_init takes"):
        run_config.validate_config(_config(pooler="lp", pooler_kwargs={"p_init": 100}))
    config = _config(pooler="blur", pooler_kwargs={"pad_mode": "foo"})
    with pytest.raises(run_config.ConfigError, match=r"^bad pooler_kwargs \{'pad_mode': 'foo'\}"):
        run_config.validate_config(config)
        run_config.validate_model(config, (8, 8, 1), 10)


def test_a_config_without_a_field_is_refused():
    config = default.get_config()
    del config["batch_size"]
    with pytest.raises(run_config.ConfigError, match=r"lacks field\(s\) batch_size"):
        run_config.validate_config(config)


def test_default_config_is_valid():
    run_config.validate_config(default.get_config())
    run_config.validate_config(_config(pooler="tdgs", pooler_kwargs={}))


def test_pooler_report_is_readable():
    config = _config(pooler="tdgs")
    params = {
        "conv1": {"kernel": np.zeros((3, 3, 1, 16))},
        "pool1": {"TDGSPool_0": {"temperature": np.full((4, 4, 16), -1.0)}},
        "pool2": {"MixedPool_0": {"alpha": np.zeros(32)}},
        "pool3": {"GatedPool_0": {"gate_kernel": np.ones((2, 2, 64)), "gate_bias": np.zeros(64)}},
    }
    report = models.pooler_report(params, config.pooler, {})
    json.dumps(report)  # plain JSON
    temperature = report["layers"]["pool1"]["temperature"]
    assert np.shape(temperature["map"]) == (4, 4)
    assert temperature["min"] == pytest.approx(0.1)  # relu(-1) + 0.1
    assert report["layers"]["pool2"]["alpha"]["mixing_weight_s"] == [0.5] * 32
    gate = report["layers"]["pool3"]
    assert gate["gate_kernel"]["mean"] == 1.0
    assert gate["gate_bias"]["sigmoid_mean"] == 0.5
    assert "conv1" not in report["layers"]


def test_a_workdir_of_another_run_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config(pooler="avg").to_dict()))
    (tmp_path / "checkpoints" / "22").mkdir(parents=True)
    with pytest.raises(run_config.ConfigError, match="different pooler"):
        loop.train_and_evaluate(_config(pooler="max"), str(tmp_path))


def test_a_workdir_whose_path_is_not_utf8_is_refused_before_training(tmp_path):
    # Orbax cannot write there: it trained epoch 1, then failed at its checkpoint, every rerun.
    workdir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")
    with pytest.raises(run_config.ConfigError, match=r"is not valid UTF-8 \(orbax cannot"):
        loop.train_and_evaluate(_config(), workdir)


def test_a_workdir_that_is_a_broken_symbolic_link_says_so(tmp_path):
    (tmp_path / "run").symlink_to(tmp_path / "gone")
    with pytest.raises(
        run_config.ConfigError,
        match=rf"workdir {tmp_path}/run is a symbolic link to {tmp_path}/gone, which does not",
    ):
        loop.train_and_evaluate(_config(), str(tmp_path / "run"))


def _metrics_row(epoch):
    return {"epoch": epoch, "test_accuracy": 0.7, "train_seconds": 1.0, "images_per_second": 9.0,
            "includes_startup": epoch == 1}  # fmt: skip


def test_a_finished_run_without_checkpoints_is_still_refused(tmp_path):
    # Checkpoints deleted to save space: its metrics.jsonl still holds results to keep, from
    # another config and from this one (training from scratch would overwrite them).
    (tmp_path / "config.json").write_text(json.dumps(_config(pooler="avg").to_dict()))
    (tmp_path / "metrics.jsonl").write_text(json.dumps(_metrics_row(1)) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "done", "epochs_completed": 1}))
    with pytest.raises(run_config.ConfigError, match="different pooler"):
        loop.train_and_evaluate(_config(pooler="max"), str(tmp_path))
    with pytest.raises(
        run_config.ConfigError,
        match=r"holds 1 finished epoch\(s\) \(metrics.jsonl\) but no checkpoint to continue them",
    ):
        loop.train_and_evaluate(_config(pooler="avg"), str(tmp_path))


class _Killed(Exception):
    """Stands for a SIGKILL: nothing after it runs."""


def test_a_run_killed_while_its_first_checkpoint_was_written_starts_over(tmp_path, monkeypatch):
    """Killed between epoch 1's metrics row and its checkpoint (orbax writes asynchronously): the
    rerun trains again from the start, to the same row, where it was refused (the user had to
    delete the workdir).  More rows, or a summary, without checkpoints stay refused."""
    config = _config(num_epochs=1)
    save = checkpointing.Checkpoints.save

    def killed_at_the_epoch_end(self, step, item, meta, *, replace=False):
        if replace:  # the epoch-end save, after the row was appended
            raise _Killed
        return save(self, step, item, meta, replace=replace)

    with monkeypatch.context() as patch:
        patch.setattr(checkpointing.Checkpoints, "save", killed_at_the_epoch_end)
        with pytest.raises(_Killed):
            loop.train_and_evaluate(config, str(tmp_path))
    killed = _rows(tmp_path)
    assert [row["epoch"] for row in killed] == [1] and not run_files.checkpoint_steps(tmp_path)
    loop.train_and_evaluate(config, str(tmp_path))
    assert _without_timing(_rows(tmp_path)) == _without_timing(killed)
    summary = _summary(tmp_path)
    assert summary["status"] == "done" and summary["dataset_version"].startswith("scikit-learn ")

    class Reached(Exception):
        pass

    def setup(*args):
        raise Reached

    monkeypatch.setattr(loop, "_setup", setup)
    shutil.rmtree(tmp_path / "checkpoints")  # as the kill left it, or deleted by hand
    stopped_before_training = {"status": "interrupted", "epochs_completed": 0}
    cases = [  # (epochs in metrics.jsonl, summary.json, starts over)
        ([1, 2], None, False),  # checkpoints deleted by hand: more than one epoch to keep
        ([1], {"status": "interrupted", "epochs_completed": 1}, False),  # the row's own summary
        ([1], None, True),
        ([1], stopped_before_training, True),  # an earlier attempt's, from before the row
    ]
    for epochs, summary, starts_over in cases:
        lines = "".join(json.dumps(_metrics_row(epoch)) + "\n" for epoch in epochs)
        (tmp_path / "metrics.jsonl").write_text(lines)
        (tmp_path / "summary.json").unlink(missing_ok=True)
        if summary is not None:
            (tmp_path / "summary.json").write_text(json.dumps(summary))
        if starts_over:
            with pytest.raises(Reached):  # past the workdir's checks
                loop.train_and_evaluate(_config(num_epochs=2), str(tmp_path))
        else:
            with pytest.raises(run_config.ConfigError, match="but no checkpoint to continue"):
                loop.train_and_evaluate(_config(num_epochs=2), str(tmp_path))


def test_a_workdir_another_process_trains_is_refused(tmp_path):
    # Two train.main on one workdir interleaved their rows and checkpoints; with two poolers,
    # the second took over the first's checkpoints under its own name.
    workdir = tmp_path / "run"
    with held_by_another_process(workdir) as pid:
        with pytest.raises(
            run_config.ConfigError,
            match=rf"^workdir {workdir} is in use: process {pid} is training this run; wait for "
            r"it to end, or use another --workdir$",
        ):
            loop.train_and_evaluate(_config(num_epochs=1), str(workdir))
        assert not (workdir / "config.json").exists()
    with run_files.locked_run_dir(str(workdir)):  # this process's own hold (a sweep's) is fine
        loop.train_and_evaluate(_config(num_epochs=1), str(workdir))
    assert [row["epoch"] for row in _rows(workdir)] == [1]


def test_locks_are_reentrant_in_a_process_and_released_at_the_end(tmp_path):
    with run_files.locked_run_dir(str(tmp_path)):
        with run_files.locked_run_dir(str(tmp_path / ".")):  # the same directory, held again
            pass
        with pytest.raises(AssertionError):  # still held: another process cannot take it
            with held_by_another_process(tmp_path):
                pass
    with held_by_another_process(tmp_path) as pid:  # released
        assert (tmp_path / run_files.LOCK_FILE).read_text() == f"{pid}\n"
        with pytest.raises(run_files.RunDirInUse, match=rf"is in use: process {pid} is"):
            with run_files.locked_run_dir(str(tmp_path)):
                pass


def test_a_filesystem_without_locks_trains_with_a_warning(tmp_path, monkeypatch, caplog):
    def no_locks(file, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_files.fcntl, "flock", no_locks)
    with run_files.locked_run_dir(str(tmp_path)):
        pass
    assert f"cannot lock {tmp_path} (No locks available): nothing keeps another" in caplog.text


def test_a_held_workdir_is_refused_before_its_data_is_read(tmp_path, monkeypatch):
    def load(*args):
        raise AssertionError("read the data of a run it then refused")

    monkeypatch.setattr(loop.input_pipeline, "load", load)
    with held_by_another_process(tmp_path), pytest.raises(run_config.ConfigError, match="in use"):
        loop.train_and_evaluate(_config(), str(tmp_path))


def test_a_failed_checkpoint_write_stops_the_run_where_it_resumes(tmp_path, monkeypatch):
    """A save that fails in the background (a full disk) surfaces before the next epoch's row is
    written, as one line; the run resumes from what its checkpoints cover, to an uninterrupted
    run's figures.  (It surfaced one save later, after that row: a failed first checkpoint left
    two rows and no checkpoint, which no rerun would take.)"""
    manager = checkpointing.ocp.CheckpointManager
    saved, wait = [], manager.wait_until_finished

    def save(self, step, *args, **kwargs):
        result = manager_save(self, step, *args, **kwargs)
        saved.append(step)  # pending: the next wait fails
        return result

    def failing_wait(self):
        wait(self)
        if saved:
            saved.clear()
            raise ValueError(
                'RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database: Failed to write '
                "53342 bytes to file 12: No space left on device [os_error_code='28']"
            )

    manager_save = manager.save
    with monkeypatch.context() as patch:
        patch.setattr(manager, "save", save)
        patch.setattr(manager, "wait_until_finished", failing_wait)
        with pytest.raises(
            run_files.WriteError,
            match=rf"^cannot write a checkpoint in {tmp_path}/checkpoints: No space left on device$",
        ):
            loop.train_and_evaluate(_config(num_epochs=2), str(tmp_path))
    assert [row["epoch"] for row in _rows(tmp_path)] == [1]
    loop.train_and_evaluate(_config(num_epochs=2), str(tmp_path))
    loop.train_and_evaluate(_config(num_epochs=2), str(tmp_path / "uninterrupted"))
    assert _without_timing(_rows(tmp_path)) == _without_timing(_rows(tmp_path / "uninterrupted"))


def test_the_saved_config_holds_the_data_dir_as_an_absolute_path(tmp_path, monkeypatch):
    """train.evaluate reads it back from wherever it runs (a relative one was saved as typed)."""

    class Reached(Exception):
        pass

    def setup(*args):
        raise Reached

    monkeypatch.setattr(loop, "_setup", setup)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Reached):
        loop.train_and_evaluate(_config(data_dir="data/"), str(tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data_dir"] == str(tmp_path / "data")


def test_checkpoints_without_their_config_are_refused(tmp_path):
    (tmp_path / "checkpoints" / "22").mkdir(parents=True)
    with pytest.raises(run_config.ConfigError, match=r"holds checkpoints or finished epochs but no "
                       r"config\.json"):  # fmt: skip
        loop.train_and_evaluate(_config(), str(tmp_path))


def test_a_metrics_file_cut_short_beside_its_checkpoint_is_refused(tmp_path, monkeypatch):
    """The checkpoint finished 2 epochs, metrics.jsonl holds epoch 1 only: resuming would report
    a run without its epoch 2 (before: silently)."""
    (tmp_path / "config.json").write_text(json.dumps(_config(num_epochs=3).to_dict()))
    (tmp_path / "checkpoints" / "44").mkdir(parents=True)
    (tmp_path / "metrics.jsonl").write_text(json.dumps(_metrics_row(1)) + "\n")
    meta = loop.run_metrics.epoch_start(2, 0)

    def restore_latest(self, target):
        return loop.checkpointing.Restored(44, target, dict(meta), ())

    monkeypatch.setattr(loop.checkpointing.Checkpoints, "restore_latest", restore_latest)
    with pytest.raises(run_config.ConfigError, match=r"its checkpoint finished 2 epochs but "
                       r"metrics\.jsonl holds epoch 1; it was cut or edited"):  # fmt: skip
        loop.train_and_evaluate(_config(num_epochs=3), str(tmp_path))
    # A checkpoint whose metadata lost its sums: one line, not a ZeroDivisionError at the epoch end.
    meta = {"epoch": 2}
    with pytest.raises(run_config.ConfigError, match=r"the checkpoint at step 44 lacks data_seed, "
                       r"loss_sum, correct, count, train_seconds in its metadata"):  # fmt: skip
        loop.train_and_evaluate(_config(num_epochs=3), str(tmp_path))


def test_a_workdir_of_an_untrained_run_takes_the_new_config(tmp_path, monkeypatch):
    # A run that stopped before its first checkpoint (a bad setting, a NaN at step 2) left only
    # its config: the corrected command may start there.
    (tmp_path / "config.json").write_text(json.dumps(_config(pooler="avg").to_dict()))
    (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1").mkdir(parents=True)  # unfinished

    class Reached(Exception):
        pass

    def load(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(loop.input_pipeline, "load", load)
    with pytest.raises(Reached):
        loop.train_and_evaluate(_config(pooler="max"), str(tmp_path))


def test_a_bug_that_the_pooler_defaults_share_keeps_its_traceback(monkeypatch):
    # Only an error the user's pooler_kwargs cause is a ConfigError (exit 2, one line).
    def broken(pooler, kwargs, image_shape, num_classes):
        raise ValueError("internal")

    monkeypatch.setattr(run_config, "_trace_cnn", broken)
    with pytest.raises(ValueError, match=r"^internal$"):
        run_config.validate_model(_config(pooler="tdgs", pooler_kwargs={"tau": 2.0}), (8, 8, 1), 10)


def test_a_pooler_that_only_fits_larger_images_is_a_config_error():
    # blur's reflect padding needs 3 rows after the 2x2 max: 8x8 digits leave 2x2 maps
    with pytest.raises(
        run_config.ConfigError,
        match=r"pooler 'blur' does not fit the CNN for digits \(input 8x8x1\): reflect padding",
    ):
        run_config.validate_model(_config(pooler="blur"), (8, 8, 1), 10)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "summary.json").mkdir(), "its 'summary.json' is not a file"),
        (lambda d: (d / "metrics.jsonl").mkdir(), "its 'metrics.jsonl' is not a file"),
        (lambda d: (d / "config.json").write_text("garbage"), "cannot read its config.json"),
        (lambda d: (d / "config.json").write_text("[]"), "cannot read its config.json"),
        (lambda d: (d / "checkpoints").write_text(""), "its 'checkpoints' is not a directory"),
    ],
)
def test_a_workdir_with_files_a_run_does_not_write_is_refused(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(run_config.ConfigError, match=message):
        loop.train_and_evaluate(_config(), str(tmp_path))


def test_fewer_epochs_than_a_workdir_holds_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config().to_dict()))
    (tmp_path / "checkpoints" / "66").mkdir(parents=True)  # 3 epochs of 22 steps
    with pytest.raises(run_config.ConfigError, match=r"trained for 3 epochs .*more than the 2"):
        loop.train_and_evaluate(_config(num_epochs=2), str(tmp_path))
    # Stopped in its 4th epoch: asking for 3 is refused, with advice that then holds (4).
    (tmp_path / "checkpoints" / "68").mkdir()
    with pytest.raises(run_config.ConfigError, match=r"trained for 4 epochs .*ask for 4 or more"):
        loop.train_and_evaluate(_config(num_epochs=3), str(tmp_path))


@pytest.mark.parametrize(
    ("pooler", "kwargs", "message"),
    [
        ("tdgs", {"tau": -1}, r"bad pooler_kwargs \{'tau': -1\} for pooler 'tdgs' .*8x8x1.*tau"),
        ("max", {"window_shape": [3, 3]}, r"window_shape height 3 is larger than the input"),
        ("gated", {"per": "pixel"}, r"per must be one of"),
    ],
)
def test_pooler_kwargs_that_fail_on_the_cnn_are_config_errors(pooler, kwargs, message):
    config = _config(pooler=pooler, pooler_kwargs=kwargs)
    with pytest.raises(run_config.ConfigError, match=message):
        run_config.validate_config(config)
        run_config.validate_model(config, (8, 8, 1), 10)


# --------------------------------------------------------------------------- end to end


def _after_each_chunk(monkeypatch, after):
    """Replaces ``loop._run_chunk`` by the real chunk followed by
    ``after(step_before, count, (state, out))``, whose return value the loop then sees."""
    real_chunk = loop._run_chunk

    def chunk(state, data, order, first, count, *args, **kwargs):
        step = int(state.step)
        return after(step, count, real_chunk(state, data, order, first, count, *args, **kwargs))

    monkeypatch.setattr(loop, "_run_chunk", chunk)


@pytest.mark.slow
def test_one_epoch_on_mock_cifar100_uses_its_100_classes(tmp_path):
    # Every pooler on mock data and on 8 devices: tests/test_multidevice.py.
    config = _config(
        dataset="cifar100", pooler="mixed", num_epochs=1, batch_size=16, data_dir="/nonexistent"
    )
    with mock_tfds(num_examples=48):
        final = loop.train_and_evaluate(config, str(tmp_path))
    assert METRIC_KEYS | TIMING_KEYS <= set(final)
    assert final["step"] == 3  # 48 // 16
    for key in METRIC_KEYS | TIMING_KEYS:
        assert math.isfinite(final[key]), key
    summary = _summary(tmp_path)
    assert summary["status"] == "done" and summary["final"] == final
    assert summary["pooler_param_count"] == 16 + 32 + 64  # mixed: one alpha per channel
    with open(tmp_path / "pooler_params.json") as f:
        layers = json.load(f)["layers"]
    assert len(layers["pool3"]["alpha"]["mixing_weight_s"]) == 64


@pytest.mark.slow
def test_digits_demo_settings_reach_90_percent(tmp_path):
    """The settings of README's first command: ``python -m train.main --dataset digits``."""
    seen = []
    final = loop.train_and_evaluate(_config(pooler="max"), str(tmp_path), on_epoch=seen.append)
    assert final["test_accuracy"] >= 0.90
    rows = _rows(tmp_path)
    assert rows == seen and [r["epoch"] for r in rows] == list(range(1, 21))
    summary = _summary(tmp_path)
    assert summary["status"] == "done"
    assert summary["best_test_accuracy"] == max(r["test_accuracy"] for r in rows)
    assert summary["param_count"] > summary["pooler_param_count"] == 0
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["dataset"] == "digits"


@pytest.mark.slow
def test_resume_gives_the_metrics_of_an_uninterrupted_run(tmp_path, monkeypatch, caplog):
    # A stochastic pooler: resuming must also restore the data order and the pooling keys.
    # Chunks of 3 steps: 22 steps per epoch make a short last chunk, and resumes mid-chunk-plan.
    config = _config(pooler="stochastic", num_epochs=2, steps_per_chunk=3)
    loop.train_and_evaluate(config, str(tmp_path / "whole"))
    want = _without_timing(_rows(tmp_path / "whole"))
    assert len(want) == 2

    # Stopped after epoch 1 (a config that stops early), then rerun.
    stopped = tmp_path / "stopped"
    loop.train_and_evaluate(
        _config(pooler="stochastic", num_epochs=2, steps_per_chunk=3, stop_after_epochs=1),
        str(stopped),
    )
    assert _summary(stopped)["status"] == "stopped" and len(_rows(stopped)) == 1
    with caplog.at_level(logging.WARNING, logger=loop.logger.name):
        loop.train_and_evaluate(config, str(stopped))
    assert _without_timing(_rows(stopped)) == want
    assert _summary(stopped)["status"] == "done"
    assert "micro-batches" not in caplog.text
    # Resumed with another micro-batch count and pooler implementation ('fast' and 'reference' draw
    # other noise from one key), the run goes on and says it is no longer exact.
    changed = tmp_path / "changed"
    loop.train_and_evaluate(
        _config(pooler="stochastic", num_epochs=2, steps_per_chunk=3, stop_after_epochs=1),
        str(changed),
    )
    n = jax.device_count()
    per_device = 64 // n
    automatic = run_config.microbatches_for(per_device, 0, jax.devices()[0].platform)  # 1 on GPU
    other = 1 if automatic != 1 else 2  # any count but the automatic one
    with caplog.at_level(logging.WARNING, logger=loop.logger.name):
        loop.train_and_evaluate(
            _config(
                pooler="stochastic",
                num_epochs=2,
                microbatch_size=per_device // other,
                implementation="reference",
            ),
            str(changed),
        )
    devices = f"{n} {jax.default_backend()} device{'s' if n != 1 else ''}"
    assert (
        f"resuming with {other} micro-batches per step on {devices}, implementation='reference', "
        f"1 seed in one program, where the run trained with {automatic} micro-batches per step "
        f"on {devices}, implementation='auto', 1 seed in one program"
    ) in caplog.text

    # SIGINT in the middle of epoch 2: the running chunk ends, a checkpoint of that exact step is
    # saved, then the rerun resumes there.
    armed = []

    def interrupt(step, count, result):
        if armed and step == 22 + 3:  # epoch 2, its second chunk of 3 steps
            armed.clear()
            os.kill(os.getpid(), signal.SIGINT)
        return result

    _after_each_chunk(monkeypatch, interrupt)
    for corrupt_latest in (False, True):
        armed.append(True)
        workdir = tmp_path / f"signal-{corrupt_latest}"
        with pytest.raises(loop.Interrupted, match="epoch 2 at global step 28"):
            loop.train_and_evaluate(config, str(workdir))
        assert _summary(workdir)["status"] == "interrupted"
        assert sorted(os.listdir(workdir / "checkpoints")) == ["22", "28"]
        if corrupt_latest:  # reported, and the epoch-1 checkpoint is used instead
            for root, _, files in os.walk(workdir / "checkpoints" / "28"):
                for name in files:
                    (pathlib.Path(root) / name).write_bytes(b"")
        loop.train_and_evaluate(config, str(workdir))
        assert _without_timing(_rows(workdir)) == want, corrupt_latest


def test_a_ctrl_c_dropped_before_training_stops_it_before_its_first_step(tmp_path):
    config = _config(pooler="avg", num_epochs=1)
    with interrupts.recorded():
        drop_a_ctrl_c()  # e.g. in JAX's gc callback while the data loads
        with pytest.raises(loop.Interrupted, match="signal 2 before training from global step 0;"):
            loop.train_and_evaluate(config, str(tmp_path))
        assert interrupts.received() == []  # training took it
    assert _summary(tmp_path)["status"] == "interrupted"
    assert run_files.checkpoint_steps(tmp_path) == []


@pytest.mark.slow
def test_a_signal_at_the_last_step_of_the_last_epoch_resumes_once(tmp_path, monkeypatch):
    # The signal's checkpoint (step 44) still marks epoch 2 open; the epoch-end save of the
    # rerun must replace it, or every later rerun evaluates epoch 2 again.
    config = _config(pooler="avg", num_epochs=2, steps_per_chunk=3)

    def interrupt(step, count, result):
        if step + count == 44 and not os.path.exists(tmp_path / "summary.json"):
            os.kill(os.getpid(), signal.SIGINT)
        return result

    _after_each_chunk(monkeypatch, interrupt)
    with pytest.raises(loop.Interrupted, match="epoch 2 at global step 44"):
        loop.train_and_evaluate(config, str(tmp_path))
    loop.train_and_evaluate(config, str(tmp_path))
    rows = (tmp_path / "metrics.jsonl").read_text()
    assert [r["epoch"] for r in _rows(tmp_path)] == [1, 2]
    loop.train_and_evaluate(config, str(tmp_path))  # finished: nothing to redo
    assert (tmp_path / "metrics.jsonl").read_text() == rows


FINISH_UNDER_SIGNAL = """
import os, signal, sys
from configs import digits
from train.core import checkpointing, loop

close = checkpointing.Checkpoints.close

def close_under_signal(self):  # SIGTERM while the finished run's last checkpoint is written
    os.kill(os.getpid(), signal.SIGTERM)
    close(self)

checkpointing.Checkpoints.close = close_under_signal
config = digits.get_config()
config.update(num_epochs=1, progress=False, pooler="avg")
try:
    loop.train_and_evaluate(config, sys.argv[1])
except loop.Interrupted as e:
    print(e)
    sys.exit(128 + e.signum)
"""


@pytest.mark.slow
def test_a_signal_while_the_finished_run_is_saved_loses_nothing(tmp_path):
    # It killed the process: the last checkpoint stayed an orbax tmp folder, no summary.json.
    # Now the save completes, then the run stops as asked (a sweep must not go on).
    proc = subprocess.run(
        [sys.executable, "-c", FINISH_UNDER_SIGNAL, str(tmp_path)],
        cwd=pathlib.Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "while the finished run was saved" in proc.stdout
    assert _summary(tmp_path)["status"] == "done"
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["22"]


def test_an_epoch_end_checkpoint_replaces_one_taken_at_the_same_step(tmp_path):
    # A signal right after an epoch's last step saves that step with the epoch still open.
    ckpt = checkpointing.Checkpoints(tmp_path)
    item = {"w": np.zeros(2, np.float32)}
    assert ckpt.save(22, item, {"epoch": 0, "count": 1408})
    assert ckpt.save(22, item, {"epoch": 1, "count": 0}, replace=True)
    ckpt.close()
    restored = checkpointing.Checkpoints(tmp_path).restore_latest(item)
    assert (restored.step, restored.meta) == (22, {"epoch": 1, "count": 0})


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_epoch_and_step(tmp_path, monkeypatch):
    config = _config(pooler="max", num_epochs=2, steps_per_chunk=5)

    def poison(step, count, result):
        state, out = result
        # NaN from global step 31 on: epoch 2 (22 steps per epoch), its 9th step.
        loss = np.asarray(out["loss"]).copy()
        loss[max(0, 30 - step) :] = np.nan
        return state, {**out, "loss": loss}

    _after_each_chunk(monkeypatch, poison)
    with pytest.raises(loop.NonFiniteLossError, match=r"at epoch 2, step 9 of 22"):
        loop.train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["22"]  # the last good one stays
    assert _summary(tmp_path)["status"] == "failed"
    assert len(_rows(tmp_path)) == 1


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_TFDS / "mnist").is_dir(),
    reason=f"real MNIST (TFDS array_record) not found at {SHARED_TFDS}",
)
def test_real_mnist_one_epoch_max_pool_reaches_97_percent(tmp_path):
    config = _config(dataset="mnist", pooler="max", num_epochs=1, data_dir=str(SHARED_TFDS))
    config.eval_batch_size = 1000
    final = loop.train_and_evaluate(config, str(tmp_path))
    assert final["test_accuracy"] >= 0.97
    assert final["step"] == 60000 // 64


def test_enable_compilation_cache_points_jax_at_the_directory(tmp_path, monkeypatch):
    old = jax.config.jax_compilation_cache_dir
    try:
        path = run_config.enable_compilation_cache(str(tmp_path / "cache"))
        assert path == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
        assert jax.config.jax_compilation_cache_dir == path
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
        assert run_config.enable_compilation_cache() == str(tmp_path / "env")
        # One that cannot be written is off, the variable's too (JAX would read it itself).
        (tmp_path / "afile").write_text("")
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "afile" / "cache"))
        assert run_config.enable_compilation_cache() == ""
        assert jax.config.jax_compilation_cache_dir is None
        undecodable = os.fsdecode(os.fsencode(str(tmp_path)) + b"/h\xff")  # a HOME of bytes
        assert run_config.enable_compilation_cache(undecodable) == ""
    finally:
        jax.config.update("jax_compilation_cache_dir", old)


@pytest.mark.parametrize(
    ("per_device", "size", "platform", "want"),
    [
        (64, 0, "cpu", 2),
        (256, 0, "cpu", 8),
        (100, 0, "cpu", 2),  # 3 does not divide 100: two micro-batches of 50
        (16, 0, "cpu", 1),
        (256, 0, "gpu", 1),
        (256, 0, "tpu", 1),
        (256, 64, "gpu", 4),
        (64, 64, "cpu", 1),
    ],
)
def test_microbatches_for(per_device, size, platform, want):
    assert run_config.microbatches_for(per_device, size, platform) == want


def test_microbatch_size_must_divide_the_per_device_batch():
    with pytest.raises(run_config.ConfigError, match="microbatch_size 24 does not divide the"):
        run_config.validate_config(_config(batch_size=64, microbatch_size=24))
    with pytest.raises(run_config.ConfigError, match="microbatch_size must be an integer >= 0"):
        run_config.validate_config(_config(microbatch_size=-1))


def test_evaluation_leaves_padding_out_even_where_its_loss_is_not_finite():
    # Row 1 is padding (mask 0) whose logits overflow: its loss must not reach the sums.
    logits = jnp.array([[0.0, math.log(3.0)], [jnp.inf, -jnp.inf], [0.0, 0.0]])
    state = types.SimpleNamespace(params={}, apply_fn=lambda variables, x, deterministic: logits)
    batch = {"image": jnp.zeros((3, 2, 2, 1), jnp.uint8), "label": jnp.array([1, 0, 0]),
             "mask": jnp.array([1.0, 0.0, 1.0])}  # fmt: skip
    sums = steps.eval_step(state, batch)
    np.testing.assert_allclose(sums["loss_sum"], math.log(4 / 3) + math.log(2), rtol=1e-6)
    assert (float(sums["correct"]), float(sums["count"])) == (2.0, 2.0)


def test_cross_entropy_worked_by_hand_and_against_optax():
    # logits (0, ln 3), label 1: log(1 + 3) - ln 3 = ln(4/3); (0, 0), label 0: ln 2.  Derivative:
    # softmax - one-hot.
    logits = jnp.array([[0.0, math.log(3.0)], [0.0, 0.0]])
    labels = jnp.array([1, 0])
    loss = steps.cross_entropy(logits, labels)
    np.testing.assert_allclose(loss, [math.log(4 / 3), math.log(2)], rtol=1e-6)
    grad = jax.grad(lambda z: steps.cross_entropy(z, labels).sum())(logits)
    np.testing.assert_allclose(grad, [[0.25, -0.25], [-0.5, 0.5]], rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(scale=4.0, size=(32, 10)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 32), jnp.int32)
    theirs = optax.softmax_cross_entropy_with_integer_labels
    np.testing.assert_allclose(steps.cross_entropy(z, y), theirs(z, y), rtol=1e-6, atol=1e-6)
    ours_grad, optax_grad = (
        jax.grad(lambda v, f=f: f(v, y).mean())(z) for f in (steps.cross_entropy, theirs)
    )
    np.testing.assert_allclose(ours_grad, optax_grad, rtol=1e-6, atol=1e-7)


def _step_inputs(pooler):
    config = _config(pooler=pooler)
    state = steps.create_train_state(
        run_config.describe(config, (8, 8, 1), 10, 1024), jax.random.key(0)
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (16, 8, 8, 1)).astype(np.uint8),
        "label": rng.integers(0, 10, (16,)).astype(np.int32),
    }
    return state, batch


def test_microbatched_step_equals_the_whole_batch_step():
    # Micro-batches change only how the gradient is summed: compare the gradients (Adam's first
    # moment after one step is 0.1 g), not the parameters, whose first Adam step is about
    # lr * sign(g) and flips for gradients near 0 on rounding noise.  Two programs with other
    # summation orders: float32 agreement (rtol 1e-4, atol 1e-6 of the largest gradient), in full
    # float32 ("highest": a GPU's default TF32 convolutions keep only 10 mantissa bits).
    state, batch = _step_inputs("mixed")
    with jax.default_matmul_precision("highest"):
        whole, out = jax.jit(steps.train_step)(state, batch, jax.random.key(1))
        for m in (2, 4):
            parts, out_m = jax.jit(steps.step_fn(m))(state, batch, jax.random.key(1))
            np.testing.assert_allclose(out_m["loss"], out["loss"], rtol=1e-5)
            assert int(out_m["correct"]) == int(out["correct"])
            assert int(parts.step) == int(whole.step) == 1
            assert_gradients_close(parts, whole)


@pytest.mark.usefixtures("highest_precision")  # a jitted step against eager gradients
def test_microbatches_draw_their_own_pooling_keys():
    # Spec of the key derivation: micro-batch j (rows i % M == j) uses fold_in(step key, j).
    # Compared by their gradients (Adam's first moments), as in the test above.
    state, batch = _step_inputs("stochastic")
    got, _ = jax.jit(steps.step_fn(2))(state, batch, jax.random.key(1))
    key = jax.random.fold_in(jax.random.key(1), 0)

    @jax.jit  # one program for both micro-batches (op by op, each operation compiles)
    def grad(params, x, y, key):
        def loss(p):
            logits = state.apply_fn({"params": p}, x, deterministic=False, rngs={"pooling": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return jax.grad(loss)(params)

    grads = []
    for j in range(2):
        x = batch["image"][j::2].astype(np.float32) / 255.0
        grads.append(grad(state.params, x, batch["label"][j::2], jax.random.fold_in(key, j)))
    mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, *grads)
    assert_gradients_close(got, state.apply_gradients(grads=mean))
    whole_batch, _ = jax.jit(steps.train_step)(state, batch, jax.random.key(1))
    with pytest.raises(AssertionError):  # the noise really differs from one whole-batch draw
        assert_gradients_close(got, whole_batch)
