"""train.evaluate: a run's checkpoint re-evaluated, as trained and with s3's other test mode."""

from __future__ import annotations

import json

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
