"""train.evaluate: a run's checkpoint re-evaluated, as trained and with s3's other test mode."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from configs import digits
from train import evaluate
from train.core import loop


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory):
    config = digits.get_config()
    config.update(pooler="s3", num_epochs=1, progress=False)
    workdir = str(tmp_path_factory.mktemp("s3"))
    final = loop.train_and_evaluate(config, workdir)
    return workdir, final


def test_the_trained_settings_give_the_runs_own_test_metrics(s3_run):
    workdir, final = s3_run
    result = evaluate.evaluate_run(workdir)
    assert result["test_accuracy"] == final["test_accuracy"]
    assert result["test_loss"] == pytest.approx(final["test_loss"], rel=1e-6)
    assert (result["epochs_trained"], result["step"]) == (1, final["step"])


def test_the_official_s3_test_mode_evaluates_the_same_weights(s3_run, capsys):
    workdir, final = s3_run
    assert evaluate.main(["evaluate", workdir, "--pooler-kwargs", '{"test_mode": "official"}',
                          "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["pooler_kwargs"] == {"test_mode": "official"}
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["test_loss"] != pytest.approx(final["test_loss"], rel=1e-3)  # another model


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{run}/nope"], "is not a run directory"),
        (["{run}", "--pooler-kwargs", "[1]"], "--pooler-kwargs must be a JSON object"),
        (["{run}", "--pooler-kwargs", '{"test_mode": "mean"}'], "test_mode must be one of"),
        (["{run}", "--pooler-kwargs", '{"tau": 1}'], "has no argument(s) tau"),
        ([], "expected one RUN_DIR"),
    ],
)
def test_usage_errors_exit_2_with_one_line(s3_run, args, message, capsys):
    argv = ["evaluate", *(a.replace("{run}", s3_run[0]) for a in args)]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
    ("config_json", "checkpoints", "message"),
    [
        ("[]", None, "is not a run directory"),
        ('{"pooler_kwargs": [1]}', None, "is not a run directory"),
        ("copy", "file", "holds no checkpoints"),
        ("copy", None, "holds no checkpoints"),
    ],
)
def test_a_malformed_run_directory_exits_2_with_one_line_and_is_left_as_it_was(
    s3_run, tmp_path, config_json, checkpoints, message, capsys
):
    if config_json == "copy":
        shutil.copy(os.path.join(s3_run[0], "config.json"), tmp_path / "config.json")
    else:
        (tmp_path / "config.json").write_text(config_json)
    if checkpoints == "file":
        (tmp_path / "checkpoints").write_text("")
    before = sorted(os.listdir(tmp_path))
    assert evaluate.main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert sorted(os.listdir(tmp_path)) == before  # no empty checkpoints folder made


@pytest.mark.parametrize(
    ("batch", "eval_batch", "devices", "want"),
    [(60, 0, 8, 64), (60, 100, 8, 104), (64, 0, 8, 64), (60, 0, 1, 60), (60, 7, 2, 8)],
)
def test_evaluation_needs_only_its_own_batch_to_divide_the_devices(
    batch, eval_batch, devices, want
):
    config = digits.get_config()
    config.update(batch_size=batch, eval_batch_size=eval_batch, microbatch_size=4)
    evaluate._evaluation_batches(config, devices)
    assert (config.batch_size, config.eval_batch_size, config.microbatch_size) == (devices, want, 0)


def test_an_evaluation_batch_larger_than_the_training_split_is_evaluated(s3_run, tmp_path):
    """A run whose config asks for evaluation batches of 2000 (training evaluates digits' 359
    test images so, in one batch; its 1438 training images play no part): train.evaluate refused
    it for the training split's size.  Compared with the run's own evaluation in batches of 64,
    at the same (default) matmul precision: another program, which may sum in another order, so
    the loss to 1e-4 and the accuracy to one near-tie."""
    workdir, final = s3_run
    copy = shutil.copytree(workdir, tmp_path / "run")
    with open(copy / "config.json") as f:
        config = json.load(f)
    config["eval_batch_size"] = 2000
    (copy / "config.json").write_text(json.dumps(config))
    result = evaluate.evaluate_run(str(copy))
    flips = abs(round(result["test_accuracy"] * 359) - round(final["test_accuracy"] * 359))
    assert flips <= 1, flips
    assert result["test_loss"] == pytest.approx(final["test_loss"], rel=1e-4)


def test_pooler_kwargs_that_change_the_parameters_are_refused_before_reading_checkpoints():
    from train.core import run_config

    def spec(kwargs):
        config = digits.get_config()
        config.update(pooler="mixed", pooler_kwargs=kwargs)
        return run_config.describe(config, (8, 8, 1), 10, 100)

    evaluate._check_same_parameters(spec({}), spec({}), {"per": "channel"})  # the default: same
    with pytest.raises(evaluate.cli.UsageError, match=r"change the model's parameters \(pool1/"):
        evaluate._check_same_parameters(spec({"per": "layer"}), spec({}), {"per": "layer"})


def test_a_run_whose_first_checkpoint_is_being_written_says_so(s3_run, tmp_path, capsys, caplog):
    shutil.copy(os.path.join(s3_run[0], "config.json"), tmp_path / "config.json")
    (tmp_path / "checkpoints" / "22.orbax-checkpoint-tmp").mkdir(parents=True)
    assert evaluate.main(["evaluate", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path} holds no finished checkpoint yet in {tmp_path}/checkpoints\n"
    )
    assert "still being written, or the process was stopped while saving" in caplog.text
