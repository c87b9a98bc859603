"""The command line: error cases exit 2 with one line; a tiny run prints its summary lines."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

RUN_DIR = ["--workdir", "{tmp}/run"]
# (arguments, devices, expected message or fragments of it): each must exit 2 with one line on
# stderr, naming what is wrong and, where there is one, the fix.
ERRORS = [
    (
        ["--pooler", "median", "--dataset", "digits"],
        1,
        "unknown pooler 'median'; choose one of: max",
    ),
    (["--dataset", "svhn"], 1, "unknown dataset 'svhn'; choose one of: mnist, cifar10"),
    (["--dataset", "digits", "--epochs", "0"], 1, "epochs must be a positive integer, got 0"),
    (["--batch-size", "many"], 1, "--batch-size must be an integer; got 'many'"),
    (["--learning-rate", "fast"], 1, "--learning-rate must be a number; got 'fast'"),
    (["--dataset", "digits", "--seed", str(2**32)], 1, "seed must be below 2**32"),
    (
        ["--dataset", "digits", "--pooler", "tdgs", "--pooler-kwargs", '{"tau": -1}', *RUN_DIR],
        1,
        "bad pooler_kwargs {'tau': -1} for pooler 'tdgs' in the CNN for digits (input 8x8x1)",
    ),
    (["--dataset", "digits", "--workdir", "{tmp}/afile"], 1, "afile exists and is not a directory"),
    (
        ["--config", "{tmp}/returns_int.py"],
        1,
        (
            "returns_int.py must define get_config() returning an ml_collections.ConfigDict",
            "see configs/default.py",
            "its get_config() returned int",
        ),
    ),
    (
        ["--config", "{tmp}/no_get_config.py"],
        1,
        "the --config file {tmp}/no_get_config.py must define get_config() returning an",
    ),
    (["--config", "{tmp}/lacks_batch_size.py"], 1, "the config lacks field(s) batch_size"),
    (  # a shortcut flag for the missing field: the same line, not ml_collections' KeyError
        ["--config", "{tmp}/lacks_batch_size.py", "--batch-size", "32"],
        1,
        "the config lacks field(s) batch_size",
    ),
    (
        ["--config", "{tmp}/typo.py"],
        1,
        "cannot load --config {tmp}/typo.py: its get_config() raised AttributeError: 'learnin_rate'",
    ),
    (
        ["--config", "{tmp}/broken.py"],
        1,
        "cannot load --config {tmp}/broken.py: SyntaxError: ",
    ),
    (  # the file and its get_config() run once (the count in "loads" is checked below)
        ["--config", "{tmp}/counted.py", "--config.pooler=median"],
        1,
        "unknown pooler 'median'",
    ),
    (["--config.num_epochs=2"], 1, "--config.num_epochs overrides a field of a --config file"),
    (["--dataset", "digits", "--learning-rate", "-1"], 1, "learning rate must be a positive"),
    (["--no-such-flag"], 1, "Unknown command line flag 'no-such-flag'"),
    (["--dataset", "digits", "--pooler-kwargs", "{oops"], 1, "--pooler-kwargs is not valid JSON"),
    (["--pooler", "max", "--pooler-kwargs", '{"tau": 1}'], 1, "bad pooler_kwargs {'tau': 1}"),
    (["--config", "configs/none.py"], 1, "cannot load --config configs/none.py: no such file"),
    (
        ["--config", "configs/digits.py", "--config.epochs=3"],
        1,
        "unknown config field 'epochs' in --config.epochs (did you mean 'num_epochs'?); "
        "the fields are in configs/default.py",
    ),
    (
        ["--config=configs/digits.py", "--config.learning_rat", "0.1"],
        1,
        "unknown config field 'learning_rat' in --config.learning_rat (did you mean "
        "'learning_rate'?)",
    ),
    (
        ["--config", "configs/digits.py", "--config.num_epochs=abc"],
        1,
        "--config.num_epochs must be an integer; got 'abc'",
    ),
    (["--epochs", "2.5"], 1, "--epochs must be an integer; got '2.5'"),
    (
        ["--config", "configs/digits.py", "--config.pooler_kwargs=xyz"],
        1,
        "--config.pooler_kwargs must be a Python dict literal such as \"{'tau': 0.5}\"; got 'xyz'",
    ),
    (
        ["--config", "configs/digits.py", "--config.standardize=maybe"],
        1,
        "--config.standardize must be true or false; got 'maybe'",
    ),
    (["--dataset", "digits", "--batch-size", "12"], 8, "batch size 12 does not divide by the 8"),
    (["--dataset", "cifar10", "--data-dir", "{tmp}"], 1, "dataset 'cifar10' is not prepared in"),
]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    # The cheapest XLA optimisation level: these runs are tiny and compilation dominates.
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    )
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _start(args: list[str], devices: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "train.main", *args],
        cwd=ROOT,
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_each_error_exits_2_with_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "returns_int.py").write_text("def get_config():\n    return 5\n")
    (tmp_path / "no_get_config.py").write_text("config = None\n")
    (tmp_path / "typo.py").write_text(
        "from configs import digits\n\n\ndef get_config():\n"
        "    config = digits.get_config()\n    config.learnin_rate\n    return config\n"
    )
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    (tmp_path / "lacks_batch_size.py").write_text(
        "from configs import digits\n\n\ndef get_config():\n"
        "    config = digits.get_config()\n    del config['batch_size']\n    return config\n"
    )
    (tmp_path / "counted.py").write_text(  # notes each load of the file and of its config
        f"from configs import digits\n\nLOADS = {str(tmp_path / 'loads')!r}\n"
        "with open(LOADS, 'a') as f:\n    f.write('file\\n')\n\n\n"
        "def get_config():\n    with open(LOADS, 'a') as f:\n        f.write('get_config\\n')\n"
        "    return digits.get_config()\n"
    )
    # Started together: each one pays Python and JAX start-up, not training.
    procs = []
    for args, devices, message in ERRORS:
        args = [a.replace("{tmp}", str(tmp_path)) for a in args]
        fragments = (message,) if isinstance(message, str) else message
        fragments = [f.replace("{tmp}", str(tmp_path)) for f in fragments]
        procs.append((args, fragments, _start(args, devices)))
    for args, fragments, proc in procs:
        _, stderr = proc.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (args, stderr[-2000:])
        assert len(lines) == 1, (args, stderr[-2000:])
        assert lines[0].startswith("error: "), (args, lines)
        assert all(f in lines[0] for f in fragments), (args, lines)
        assert "Traceback" not in stderr
    assert (tmp_path / "loads").read_text().split() == ["file", "get_config"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no run directory was started
        "afile",
        "broken.py",
        "counted.py",
        "lacks_batch_size.py",
        "loads",
        "no_get_config.py",
        "returns_int.py",
        "typo.py",
    ]


@pytest.mark.slow
def test_run_sigterm_and_rerun_resumes_to_the_end(tmp_path):
    args = ["--dataset", "digits", "--pooler", "avg", "--epochs", "6", "--batch-size", "16"]
    args += ["--seed", "1", "--workdir", str(tmp_path), "--quiet"]
    proc = _start(args)
    first = proc.stdout.readline()
    assert first.startswith("epoch 1/6  train loss "), first + proc.stderr.read()[-2000:]
    assert "img/s" in first
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "interrupted by signal 15" in stderr and "rerun the same command" in stderr
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"

    proc = _start(args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "resumed from checkpoint" in stderr
    assert stdout.strip().splitlines()[-1].startswith("done: avg on digits, 6 epochs")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for name in ("config.json", "pooler_params.json", "summary.json"):
        assert (tmp_path / name).is_file(), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["pooler"], config["num_epochs"], config["batch_size"]) == ("avg", 6, 16)
    assert config["seed"] == 1 and config["progress"] is False
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "done"


def test_ctrl_c_outside_training_exits_130_without_a_traceback(capsys):
    from train import cli

    def run(argv):
        raise KeyboardInterrupt  # e.g. while the data loads or the step compiles

    assert cli.run_main(run, ["train.main"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_ctrl_c_python_dropped_ends_the_command_as_interrupted(capsys):
    from conftest import drop_a_ctrl_c

    from train import cli

    def run(argv):
        drop_a_ctrl_c()  # e.g. in JAX's gc callback while the step compiles
        return 0

    assert cli.run_main(run, ["train.main"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_multi_process_environment_detection():
    from train import main

    assert not main._multi_process_env({})
    assert not main._multi_process_env({"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "localhost"})
    assert main._multi_process_env({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert main._multi_process_env({"OMPI_COMM_WORLD_SIZE": "4"})
    assert main._multi_process_env({"TPU_WORKER_HOSTNAMES": "t0,t1"})
    env = {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert main._distributed_kwargs(env) == {"num_processes": 2, "process_id": 1}
    assert main._distributed_kwargs({}) == {}


def test_help_lists_the_shortcut_flags():
    proc = subprocess.run(
        [sys.executable, "-m", "train.main", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--pooler", "--dataset", "--epochs", "--batch-size", "--learning-rate"):
        assert flag in proc.stdout


def _run_elsewhere(cwd, *args: str) -> subprocess.CompletedProcess:
    """train.main run from ``cwd`` (not the repository root), jaxpool on the path."""
    return subprocess.run(
        [sys.executable, "-m", "train.main", *args],
        cwd=cwd,
        env=dict(_env(1), PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_configs_package_in_the_current_directory_is_refused(tmp_path):
    # python -m puts the current directory first: a project's own configs/mnist.py would be
    # trained with instead of jaxpool's.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "__init__.py").write_text("")
    (tmp_path / "configs" / "mnist.py").write_text("def get_config():\n    return None\n")
    proc = _run_elsewhere(tmp_path, "--workdir", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: configs.mnist is {tmp_path}/configs/mnist.py, not jaxpool's: a 'configs' "
        "package or module earlier on the import path (often the current directory) hides "
        "jaxpool's; run from another directory"
    )
    assert not (tmp_path / "run").exists()


def test_a_bundled_config_named_from_elsewhere_says_where_the_configs_are(tmp_path):
    proc = _run_elsewhere(tmp_path, "--config", "configs/digits.py")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: cannot load --config configs/digits.py: no such file in {tmp_path}; jaxpool's "
        f"own configs are in {ROOT / 'configs'}: --config {ROOT / 'configs' / 'digits.py'}"
    )


def test_a_write_error_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    from train import main
    from train.core import loop, run_config, run_files

    def full(config, workdir, **kwargs):
        raise run_files.WriteError(f"cannot write a checkpoint in {workdir}: No space left")

    monkeypatch.setattr(loop, "train_and_evaluate", full)
    monkeypatch.setattr(run_config, "enable_compilation_cache", lambda: None)
    assert main.main(["train.main", "--dataset", "digits", "--workdir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"error: cannot write a checkpoint in {tmp_path}: No space left; fix that (room, "
        "permissions) and rerun to resume\n"
    )


def test_a_jax_that_cannot_start_is_one_line_and_exit_2(tmp_path):
    # e.g. JAX_PLATFORMS=cuda where the CUDA plugin is missing: a traceback from wherever JAX
    # was first used.  A platform no JAX knows, so that the test means the same on a GPU.
    env = dict(os.environ, JAX_PLATFORMS="nosuchplatform")
    commands = [
        ["train.main", "--dataset", "digits", "--workdir", str(tmp_path / "run")],
        ["train.sweep", "--datasets", "digits", "--workdir", str(tmp_path / "sweep")],
        ["train.evaluate", str(tmp_path)],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", *command], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
        )
        for command in commands
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        assert stderr.startswith("error: JAX cannot start: Unable to initialize backend ")
        assert stderr.count("\n") == 1 and "nosuchplatform" in stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_a_closed_stdout_or_stderr_does_not_stop_training(tmp_path):
    # `| head -1` made the next epoch line a BrokenPipeError (a traceback, training stopped);
    # `2>&-` (sys.stderr None) failed every run before its first step.
    run = [sys.executable, "-m", "train.main", "--dataset", "digits", "--epochs", "3"]
    head = subprocess.run(
        ["bash", "-c", '"$@" | head -1', "bash", *run, "--workdir", str(tmp_path / "a")],
        cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert head.stdout.startswith("epoch 1/3 ") and head.stdout.count("\n") == 1
    assert "Traceback" not in head.stderr and "Error" not in head.stderr, head.stderr[-2000:]
    no_stderr = subprocess.run(
        ["bash", "-c", '"$@" 2>&-; echo "exit $?"', "bash", *run, "--workdir", str(tmp_path / "b")],
        cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert no_stderr.stdout.endswith("exit 0\n"), no_stderr.stdout[-2000:]
    for workdir in ("a", "b"):
        rows = (tmp_path / workdir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(row)["epoch"] for row in rows] == [1, 2, 3]
        assert json.loads((tmp_path / workdir / "summary.json").read_text())["status"] == "done"
