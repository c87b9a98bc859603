"""Tests of train/cli.py: flag parsing with one-line usage errors, --help, the epoch lines."""

from __future__ import annotations

import signal
import sys
import types

import pytest
from absl import flags

from train import cli


@pytest.fixture
def flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_integer("epochs", None, "Number of epochs.", flag_values=fv)
    flags.DEFINE_float("learning-rate", None, "Adam learning rate.", flag_values=fv)
    flags.DEFINE_string("workdir", None, "Output directory.", flag_values=fv)
    flags.DEFINE_bool("quiet", False, "No progress bars.", flag_values=fv)
    return fv


def test_flag_arguments_reads_the_command_line_as_absl_does():
    argv = ["prog", "--epochs=3", "-seed", "4", "run", "--quiet", "--", "--after"]
    assert cli.flag_arguments(argv) == [
        ("epochs", "3", "-seed"),
        ("seed", None, "4"),
        ("quiet", None, "--"),
    ]
    assert cli.flag_arguments(["prog", "--config.a.b=", "-"]) == [("config.a.b", "", "-")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "many"], "--epochs must be an integer; got 'many'"),
        (["--epochs=2.5"], "--epochs must be an integer; got '2.5'"),
        (["-learning-rate", "fast"], "--learning-rate must be a number; got 'fast'"),
        (["--nope"], "Unknown command line flag 'nope'"),
        (["--workdir"], "Missing value for flag --workdir"),
        (["--quiet=maybe"], "--quiet must be true or false; got 'maybe'"),
    ],
)
def test_parse_flags_usage_errors_are_one_line(flag_values, args, message):
    with pytest.raises(cli.UsageError) as raised:
        cli.parse_flags(flag_values, ["prog", *args])
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_parse_flags_returns_the_other_arguments(flag_values):
    argv = ["prog", "run", "--epochs", "3", "--learning-rate=-1e-3", "--noquiet", "--", "--x"]
    assert cli.parse_flags(flag_values, argv) == ["prog", "run", "--x"]
    assert (flag_values.epochs, flag_values["learning-rate"].value) == (3, -1e-3)


def test_print_help_shows_the_docstring_then_the_flags(flag_values, capsys):
    cli.print_help("Trains.\n\nExamples::\n\n  python -m train.main\n", flag_values)
    out = capsys.readouterr().out
    assert out.startswith("Trains.\n\nExamples::\n\n  python -m train.main\n\n")
    assert "--epochs: Number of epochs." in out and "--[no]quiet" in out


ROW = {
    "epoch": 3,
    "train_loss": 0.12345,
    "train_accuracy": 0.961,
    "test_loss": 0.0987,
    "test_accuracy": 0.9703,
    "epoch_seconds": 2.06,
    "images_per_second": 30512.4,
}


def test_epoch_lines_of_train_main_and_of_a_sweep(capsys):
    assert cli.epoch_line(ROW, 10) == (
        "epoch 3/10  train loss 0.1235 acc 96.10%  test loss 0.0987 acc 97.03%  2.1s  30,512 img/s"
    )
    cli.epoch_printer(10, indent="      ", brief=True)(ROW)
    assert capsys.readouterr().out == (
        "      epoch 3/10  train loss 0.1235  test acc 97.03%  2.1s\n"
    )


def test_a_boolean_flag_without_a_value_leaves_the_next_argument_alone(flag_values):
    assert cli.parse_flags(flag_values, ["prog", "--quiet", "maybe"]) == ["prog", "maybe"]
    assert flag_values.quiet


@pytest.mark.parametrize(("signum", "message"), [(signal.SIGINT, "interrupted"),
                                                  (signal.SIGTERM, "interrupted by signal 15")])  # fmt: skip
def test_a_signal_outside_training_is_one_line_and_128_plus_its_number(signum, message, capsys):
    def run(argv):
        signal.raise_signal(signum)
        raise AssertionError(f"signal {signum} did not stop the command")

    def stand_in(signum, frame):  # what a command that left the signal alone would meet
        raise RuntimeError(f"signal {signum} reached the stand-in handler")

    previous = signal.signal(signum, stand_in)
    try:
        assert cli.run_main(run, ["cmd"]) == 128 + signum
        assert signal.getsignal(signum) is stand_in  # restored
    finally:
        signal.signal(signum, previous)
    assert capsys.readouterr().err == message + "\n"


@pytest.fixture
def own_configs_package(tmp_path, monkeypatch):
    """A user's ``configs`` package with an ``mnist.py``, first on the import path (as the current
    directory is under ``python -m``); jaxpool's ``configs`` modules are restored afterwards."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "__init__.py").write_text("")
    (tmp_path / "configs" / "mnist.py").write_text("def get_config():\n    return 'theirs'\n")
    saved = {k: m for k, m in sys.modules.items() if k == "configs" or k.startswith("configs.")}
    for name in saved:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "configs"
    for name in [k for k in sys.modules if k == "configs" or k.startswith("configs.")]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_bundled_configs_are_jaxpools_own():
    config = cli.bundled_config("digits")
    assert config.dataset == "digits" and config.pooler == "max"
    assert cli.bundled_config("default").dataset == "mnist"


def test_a_users_configs_package_is_not_taken_for_jaxpools(own_configs_package):
    # Its mnist.py would silently replace ours; without one, the import fails: both say why.
    with pytest.raises(
        cli.UsageError,
        match=rf"configs.mnist is {own_configs_package}/mnist.py, not jaxpool's: a 'configs' "
        r"package or module earlier on the import path \(often the current directory\) hides "
        r"jaxpool's; run from another directory$",
    ):
        cli.bundled_config("mnist")
    try:  # an editable install's finder may still find jaxpool's own digits.py: also right
        config = cli.bundled_config("digits")
    except cli.UsageError as e:
        assert str(e) == (
            "cannot load jaxpool's configs/digits.py: a 'configs' package or module earlier on "
            "the import path (often the current directory) hides jaxpool's; run from another "
            f"directory ({own_configs_package}/__init__.py)"
        )
    else:
        assert config.dataset == "digits"


def test_closed_event_loop_tracebacks_are_kept_out_of_both_hooks():
    # TensorStore's callbacks after a failed save print these through either hook.
    seen = []
    excepthook, unraisablehook = cli._quiet_closed_event_loops(
        lambda kind, value, tb: seen.append(value), lambda unraisable: seen.append(unraisable)
    )
    closed, other = RuntimeError("Event loop is closed"), RuntimeError("something else")
    excepthook(RuntimeError, closed, None)
    unraisablehook(types.SimpleNamespace(exc_value=closed))
    assert seen == []
    excepthook(RuntimeError, other, None)
    unraisable = types.SimpleNamespace(exc_value=other)
    unraisablehook(unraisable)
    assert seen == [other, unraisable]


def test_a_backend_that_fails_without_a_message_is_named(monkeypatch):
    import jax

    def missing_plugin():  # jaxlib 0.10 with JAX_PLATFORMS=cuda and no CUDA plugin
        raise AssertionError

    monkeypatch.setattr(jax, "devices", missing_plugin)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    with pytest.raises(
        cli.UsageError,
        match=r"^JAX cannot start: no backend for JAX_PLATFORMS='cuda' \(is that platform's jax "
        r"plugin installed, e.g. jax\[cuda13\]\?\); unset JAX_PLATFORMS to let JAX choose$",
    ):
        cli.start_backend()
