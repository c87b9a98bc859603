"""Tests of train/core/checkpointing.py: round trip, newest-first restore, corrupt checkpoints."""

from __future__ import annotations

import os
import signal

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from train.core import checkpointing, interrupts, run_files


def _item(value: float):
    return {"w": jnp.full((3, 2), value), "step": jnp.asarray(int(value), jnp.int32)}


def test_round_trip_restores_the_newest(tmp_path):
    ckpt = checkpointing.Checkpoints(tmp_path / "c", max_to_keep=2)
    assert ckpt.restore_latest(_item(0)) is None
    for step in (1, 2, 3):
        assert ckpt.save(step, _item(step), {"epoch": step, "loss_sum": step / 3})
    assert not ckpt.save(3, _item(3), {"epoch": 3})  # an existing step is not rewritten
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]  # max_to_keep
    restored = checkpointing.Checkpoints(tmp_path / "c").restore_latest(_item(0))
    assert restored.step == 3 and restored.skipped == ()
    chex.assert_trees_all_equal(restored.item, _item(3))
    assert restored.meta == {"epoch": 3, "loss_sum": 1.0}
    ckpt.close()


def _corrupt(step_dir: str) -> None:
    """Truncates every file of a checkpoint, as a crash or a bad disk would."""
    for root, _, files in os.walk(step_dir):
        for name in files:
            with open(os.path.join(root, name), "wb"):
                pass


def test_corrupt_latest_falls_back_to_the_previous(tmp_path):
    ckpt = checkpointing.Checkpoints(tmp_path, max_to_keep=3)
    ckpt.save(1, _item(1), {"epoch": 1})
    ckpt.save(2, _item(2), {"epoch": 2})
    ckpt.close()
    _corrupt(str(tmp_path / "2"))
    restored = checkpointing.Checkpoints(tmp_path).restore_latest(_item(0))
    assert restored.step == 1
    assert [s for s, _ in restored.skipped] == [2]
    np.testing.assert_array_equal(restored.item["w"], np.ones((3, 2)))


def test_an_unreadable_step_is_replaced_when_training_reaches_it_again(tmp_path):
    ckpt = checkpointing.Checkpoints(tmp_path)
    ckpt.save(1, _item(1), {"epoch": 1})
    ckpt.save(2, _item(2), {"epoch": 2})
    ckpt.close()
    _corrupt(str(tmp_path / "2"))
    ckpt = checkpointing.Checkpoints(tmp_path)
    assert ckpt.restore_latest(_item(0)).step == 1
    assert ckpt.save(2, _item(5), {"epoch": 2})  # retrained: the new one replaces it
    ckpt.close()
    restored = checkpointing.Checkpoints(tmp_path).restore_latest(_item(0))
    assert (restored.step, restored.skipped) == (2, ())
    np.testing.assert_array_equal(restored.item["w"], np.full((3, 2), 5.0))


def test_an_unfinished_write_is_reported(tmp_path, caplog):
    ckpt = checkpointing.Checkpoints(tmp_path / "checkpoints")
    ckpt.save(1, _item(1), {"epoch": 1})
    ckpt.close()
    (tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234").mkdir()
    with caplog.at_level("WARNING", logger="train.core.checkpointing"):
        restored = checkpointing.Checkpoints(tmp_path / "checkpoints").restore_latest(_item(0))
    assert restored.step == 1
    assert "2.orbax-checkpoint-tmp-1234" in caplog.text and "has not finished" in caplog.text
    assert run_files.checkpoint_steps(tmp_path) == [1]


def test_a_ctrl_c_while_reading_is_not_taken_for_damage(tmp_path, monkeypatch):
    """orbax turns a KeyboardInterrupt raised while it reads into an error of its own: with a
    Ctrl-C recorded, the checkpoint is not marked unreadable and the restore stops."""
    ckpt = checkpointing.Checkpoints(tmp_path / "c")
    assert ckpt.save(1, _item(1), {"epoch": 1})
    ckpt.close()
    ckpt = checkpointing.Checkpoints(tmp_path / "c")

    def interrupted_read(*args, **kwargs):
        interrupts._received.append(signal.SIGINT)
        raise RuntimeError("Event loop is closed")

    monkeypatch.setattr(ckpt._manager, "restore", interrupted_read)
    try:
        with pytest.raises(KeyboardInterrupt):
            ckpt.restore_latest(_item(0))
    finally:
        interrupts.take()
    assert not ckpt._unreadable
    monkeypatch.undo()
    assert ckpt.restore_latest(_item(0)).step == 1
    ckpt.close()
