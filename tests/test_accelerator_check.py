"""train.benchmarks.accelerator_check (``train.bench --check``): steps, time limits and the summary; the
real steps (the suite, the bench, a sweep) are what it runs on an accelerator, not here."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
from conftest import ROOT

from train.benchmarks import accelerator_check


def test_steps_record_status_time_and_last_line(tmp_path):
    ok = accelerator_check.Step("ok", [sys.executable, "-c", "print('1 passed')"], 60)
    failing = accelerator_check.Step("bad", [sys.executable, "-c", "raise SystemExit(3)"], 60)
    slow = accelerator_check.Step("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 1)
    for step in (ok, failing, slow):
        accelerator_check.run_step(step, str(tmp_path / f"{step.name}.log"))
    assert (ok.status, ok.note) == ("passed", "1 passed")
    assert failing.status == "failed (exit 3)"
    assert slow.status == "timed out after 1 s" and slow.seconds < 10


def test_plan_bounds_every_step_and_passes_the_data_dir(tmp_path):
    steps = accelerator_check.plan(str(tmp_path), "/data/tfds", workers=3)
    fast_paths = [
        f"{p}, fast path" for p in ("max", "mixed", "gated", "tree", "stochastic", "tdgs")
    ]
    assert [s.name for s in steps] == [
        "device", "tests", "deterministic ops on", "deterministic ops off",
        "nondeterministic ops excluded",
        "mnist sweep (2 epochs)",
        *fast_paths, "max, fast model", "max, eval batch 1000",
        "max, command buffers off", "max, command buffers with loops",
        "seeds apart", "seeds together", "bench",
    ]  # fmt: skip
    groups = [s.group for s in steps[1:]]  # after the device, in the order of --check-steps' names
    assert groups == sorted(groups, key=accelerator_check.GROUPS.index)
    by_name = {s.name: s for s in steps}
    on, off, excluded = (by_name[n] for n in accelerator_check.DETERMINISM_STEPS)
    at = on.command.index("--workdir") + 1  # the same training, in three directories
    for other in (off, excluded):
        assert (
            on.command[:at] + on.command[at + 1 :] == other.command[:at] + other.command[at + 1 :]
        )
    assert len({on.command[at], off.command[at], excluded.command[at]}) == 3
    assert on.command[-2:] == ["--data-dir", "/data/tfds"]
    assert "XLA_FLAGS" not in on.env
    assert off.env["XLA_FLAGS"].endswith("--xla_gpu_deterministic_ops=false")
    assert excluded.env["XLA_FLAGS"].endswith(
        "--xla_gpu_deterministic_ops=false --xla_gpu_exclude_nondeterministic_ops=true"
    )
    off_graphs, loop_graphs = (by_name[n] for n in accelerator_check.GRAPH_STEPS)
    assert off_graphs.env["XLA_FLAGS"].endswith(" --xla_gpu_enable_command_buffer=")
    assert loop_graphs.env["XLA_FLAGS"].endswith(
        " --xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"
    )
    assert all(s.limit_s > 0 for s in steps)
    assert by_name["tests"].command[-3:] == ["-n", "3", "tests"]  # run in the repository root
    sweeps = [by_name[n] for n in ("mnist sweep (2 epochs)", "seeds apart", "seeds together")]
    for sweep in sweeps:
        assert sweep.command[-2:] == ["--data-dir", "/data/tfds"]
        assert "--epochs" in sweep.command and "2" in sweep.command
    assert ["--seeds-together", "off"] == sweeps[1].command[-4:-2]
    assert ["--seeds-together", "on"] == sweeps[2].command[-4:-2]
    # Every train.main step: MNIST, 2 epochs, into its own run directory, which the summary reads.
    runs = [s for s in steps if s.run_dir]
    assert [s.group for s in runs] == ["determinism"] * 3 + ["paths"] * 8 + ["graphs"] * 2
    assert len({s.run_dir for s in runs}) == len(runs)
    for step in runs:
        command = step.command
        assert command[command.index("--workdir") + 1] == step.run_dir
        assert command[command.index("--epochs") + 1] == "2" and "mnist" in command
    for name, pooler in zip(fast_paths, accelerator_check.FAST_PATH_POOLERS, strict=True):
        command = by_name[name].command
        assert command[command.index("--pooler") + 1] == pooler
        assert json.loads(command[command.index("--pooler-kwargs") + 1]) == {
            "implementation": "fast"
        }
    for name, override in (
        ("max, fast model", "--config.implementation=fast"),
        ("max, eval batch 1000", "--config.eval_batch_size=1000"),
    ):
        command = by_name[name].command
        assert override in command
        assert os.path.isfile(command[command.index("--config") + 1])


def test_fast_path_poolers_are_those_with_a_path_of_their_own():
    """avg takes ``implementation`` but runs the reference whatever it says; s3's fast path is its
    evaluation alone (``deterministic=True``), not what the paths steps time."""
    import jaxpool

    with_switch = [n for n in jaxpool.available() if "implementation" in jaxpool.hyperparameters(n)]
    assert set(accelerator_check.FAST_PATH_POOLERS) == set(with_switch) - {"avg", "s3"}


def test_summary_lists_steps_and_seconds_per_epoch_against_max(tmp_path):
    report = tmp_path / "sweep" / "report"
    report.mkdir(parents=True)
    (report / "results.csv").write_text(
        "pooler,epochs,train_seconds_per_epoch\nmax,2,0.25\ntdgs,2,0.30\ns3,2,\n"
    )
    per_epoch = accelerator_check.sweep_seconds_per_epoch(str(tmp_path / "sweep"))
    assert per_epoch == {"max": 0.25, "tdgs": 0.30}
    step = accelerator_check.Step("tests", ["pytest"], 10, returncode=0, seconds=12.0, note="ok")
    lines = accelerator_check.summary([step], per_epoch, "gpu:H200 x1")
    assert lines[0] == "accelerator check on gpu:H200 x1"
    assert "passed" in lines[2] and lines[-1].split() == ["tdgs", "0.300", "(x1.20", "max)"]
    apart = accelerator_check.Step("seeds apart", ["s"], 10, returncode=0, seconds=30.0)
    together = accelerator_check.Step("seeds together", ["s"], 10, returncode=0, seconds=12.0)
    lines = accelerator_check.summary([apart, together], {}, "gpu:H200 x1")
    assert lines[-1].endswith("30.0 s apart, 12.0 s together (x0.40)")
    # Columns as wide as the longest name and status: the longest still stand apart.
    long = accelerator_check.Step("nondeterministic ops excluded", ["m"], 10, returncode=0)
    rows = accelerator_check.summary([step, long], {}, "gpu:H200 x1")[2:4]
    assert [row.split()[:5] for row in rows] == [
        ["tests", "passed", "12", "s", "ok"],
        ["nondeterministic", "ops", "excluded", "passed", "0"],
    ]


def test_a_step_past_its_limit_is_stopped_with_the_processes_it_started(tmp_path):
    pid_file = tmp_path / "pid"
    path = str(pid_file)
    grandchild = f"import os, time; open({path!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
        "time.sleep(60)"
    )
    step = accelerator_check.Step("parent", [sys.executable, "-c", parent], 3)
    accelerator_check.run_step(step, str(tmp_path / "parent.log"))
    assert step.returncode is None
    _assert_gone(int(pid_file.read_text()))  # the grandchild had started


def _assert_gone(pid: int) -> None:
    """Process ``pid`` ends within 5 s (reparented to init, which reaps it once killed)."""
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid}, started by a step, outlived it")


def test_check_steps_names_groups_of_steps():
    assert accelerator_check.parse_groups("all") == accelerator_check.GROUPS
    assert accelerator_check.parse_groups("seeds, tests") == ("tests", "seeds")
    for bad in ("", "tests,gpu", ","):
        with pytest.raises(ValueError, match="--check-steps: expected 'all' or some of tests"):
            accelerator_check.parse_groups(bad)


def test_the_whole_check_keeps_to_its_time_and_still_writes_its_summary(tmp_path, monkeypatch):
    def fake_plan(out, data_dir, workers):
        def python(code):
            return [sys.executable, "-c", code]

        return [
            accelerator_check.Step("device", python("print('gpu:Fake x1')"), 60, "device"),
            accelerator_check.Step("tests", python("import time; time.sleep(60)"), 600, "tests"),
            accelerator_check.Step("bench", python("print('bench ran')"), 600, "bench"),
            accelerator_check.Step("sweep", python("print('sweep ran')"), 600, "sweep"),
        ]

    monkeypatch.setattr(accelerator_check, "plan", fake_plan)
    monkeypatch.setattr(accelerator_check, "MIN_STEP_SECONDS", 2)
    monkeypatch.setattr(accelerator_check, "STOP_GRACE_SECONDS", 1)
    code = accelerator_check.run(str(tmp_path), None, 1, ("tests", "bench"), total_seconds=6)
    assert code == 1
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert lines[0] == "accelerator check on gpu:Fake x1"  # the device step runs whatever is asked
    assert [line.split()[0] for line in lines[2:]] == ["device", "tests", "bench"]  # no sweep
    assert "timed out after" in lines[3]
    assert "skipped (time spent)" in lines[4]
    assert (tmp_path / "tests.log").exists() and not (tmp_path / "bench.log").exists()


def test_every_step_has_its_own_log(tmp_path):
    names = [accelerator_check.log_name(s.name) for s in accelerator_check.plan("o", None, 1)]
    assert len(set(names)) == len(names)
    assert "seeds-apart.log" in names and "mnist-sweep-2-epochs.log" in names


def test_determinism_steps_give_epoch_2_training_and_evaluation_seconds(tmp_path):
    rows = [
        {"epoch": 1, "train_seconds": 5.0, "eval_seconds": 1.0},
        {"epoch": 2, "train_seconds": 0.25, "eval_seconds": 0.02},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert accelerator_check.epoch_seconds(str(tmp_path)) == (0.25, 0.02)
    assert accelerator_check.epoch_seconds(str(tmp_path / "missing")) is None
    timed = {"deterministic ops on": (0.25, 0.02), "deterministic ops off": (0.2, 0.02)}
    lines = accelerator_check.summary([], {}, "gpu:H200 x1", timed)
    assert lines[-3].endswith("ops on: training 0.250 s, evaluating the test split 0.020 s")
    assert lines[-1] == "  cost of exactness: training x1.25"
    timed["nondeterministic ops excluded"] = (0.22, 0.02)
    lines = accelerator_check.summary([], {}, "gpu:H200 x1", timed)
    assert lines[-3].endswith(
        "autotuning kept: training 0.220 s, evaluating the test split 0.020 s"
    )
    assert lines[-2:] == [
        "  cost of exactness: training x1.25",
        "  of it, the excluded ops alone: training x1.10",
    ]


def test_paths_steps_set_fast_paths_beside_the_sweep_and_the_larger_eval_batch():
    timed = {
        "deterministic ops on": (0.25, 0.040),
        "max, fast path": (0.20, 0.03),
        "tdgs, fast path": (0.45, 0.05),
        "max, fast model": (0.50, 0.03),
        "max, eval batch 1000": (0.26, 0.008),
    }
    lines = accelerator_check.summary([], {"max": 0.25, "tdgs": 0.30}, "gpu:H200 x1", timed)
    at = next(i for i, line in enumerate(lines) if "fast path (--pooler-kwargs" in line)
    assert [line.split() for line in lines[at + 1 : at + 3]] == [
        ["max", "0.250", "->", "0.200", "(x0.80)"],
        ["tdgs", "0.300", "->", "0.450", "(x1.50)"],
    ]
    assert lines[at + 3].endswith("convolutions too): 0.500")
    assert lines[-1] == (
        "MNIST max, epoch 2, evaluating the test split at eval batch 1000: 0.008 s "
        "(at the training batch: 0.040 s)"
    )
    # Without the sweep there is nothing to set a fast path against; without the steps, no lines.
    lines = accelerator_check.summary([], {}, "gpu:H200 x1", {"tdgs, fast path": (0.45, 0.05)})
    assert lines[-1].split() == ["tdgs", "?", "->", "0.450", "(no", "sweep", "figure)"]
    assert accelerator_check.summary([], {}, "cpu", {}) == ["accelerator check on cpu", ""]


def test_a_step_gets_its_own_environment_on_top_of_the_process(tmp_path, monkeypatch):
    monkeypatch.setenv("KEPT", "yes")
    code = "import os; print(os.environ['KEPT'], os.environ['ADDED'])"
    step = accelerator_check.Step("env", [sys.executable, "-c", code], 60, env={"ADDED": "1"})
    accelerator_check.run_step(step, str(tmp_path / "env.log"))
    assert (step.status, step.note) == ("passed", "yes 1")


def test_an_earlier_checks_directory_is_refused(tmp_path):
    accelerator_check.check_out_dir(str(tmp_path / "new"))
    accelerator_check.check_out_dir(str(tmp_path))  # empty
    (tmp_path / "summary.txt").write_text("an earlier check")
    with pytest.raises(ValueError, match=r"already holds files .* remove it or give another"):
        accelerator_check.check_out_dir(str(tmp_path))
    with pytest.raises(ValueError, match="already holds files"):
        accelerator_check.run(str(tmp_path), None, 1, ())
    a_file = tmp_path / "summary.txt"
    with pytest.raises(ValueError, match=r"is a file; give a new or empty directory"):
        accelerator_check.check_out_dir(str(a_file))
    with pytest.raises(ValueError, match=rf"{a_file} is not a writable directory"):
        accelerator_check.check_out_dir(str(a_file / "deeper" / "check"))
    with pytest.raises(ValueError, match=r"expected a directory path, got an empty one"):
        accelerator_check.check_out_dir("")


def test_data_dir_and_time_limit_are_checked_before_any_step(tmp_path, monkeypatch):
    accelerator_check.check_data_dir(str(tmp_path / "missing"), ("tests", "bench"))  # not read
    with pytest.raises(ValueError, match=r"--check-data-dir .*missing is not a directory"):
        accelerator_check.check_data_dir(str(tmp_path / "missing"), ("sweep",))
    with pytest.raises(ValueError, match=r"holds no prepared TFDS mnist"):
        accelerator_check.check_data_dir(str(tmp_path), ("determinism",))
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)  # an empty dataset: refused too
    with pytest.raises(ValueError, match=r"holds no prepared TFDS mnist"):
        accelerator_check.check_data_dir(str(tmp_path), ("determinism",))
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    (tmp_path / "mnist" / "3.0.1" / "mnist-train.array_record-00000-of-00001").write_text("")
    with pytest.raises(ValueError, match=r"--check-data-dir .*: dataset 'mnist' in .* cannot be"):
        accelerator_check.check_data_dir(str(tmp_path), ("determinism",))  # TFDS cannot read it
    shared = ROOT.parent / "shared" / "tfds"
    if (shared / "mnist").is_dir():  # the real one passes
        accelerator_check.check_data_dir(str(shared), accelerator_check.DATA_GROUPS)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "nowhere"))  # no flag: TFDS's default
    with pytest.raises(ValueError, match=r"TFDS's default data dir \(no --check-data-dir\)"):
        accelerator_check.check_data_dir(None, ("sweep",))
    accelerator_check.check_seconds(None)
    accelerator_check.check_seconds(accelerator_check.MIN_STEP_SECONDS)
    with pytest.raises(ValueError, match=r"--check-seconds must be at least 60 .*; got 59"):
        accelerator_check.check_seconds(59)
    with pytest.raises(ValueError, match=r"holds no prepared TFDS mnist"):  # before out is made
        accelerator_check.run(str(tmp_path / "out"), str(tmp_path / "mnist"), 1, ("sweep",))
    assert not (tmp_path / "out").exists()


def test_xla_gpu_figures_are_marked_as_noise_off_a_gpu():
    timed = {
        "deterministic ops on": (0.25, 0.02),
        "deterministic ops off": (0.2, 0.02),
        "max, command buffers off": (0.30, 0.05),
    }
    for device in ("gpu:NVIDIA H200 x1", "cuda:NVIDIA H100 x1"):
        assert accelerator_check.NO_GPU_NOTE not in accelerator_check.summary([], {}, device, timed)
    lines = accelerator_check.summary([], {}, "cpu:cpu x1", timed)
    assert lines.count(accelerator_check.NO_GPU_NOTE) == 2  # determinism and graphs
    assert lines.index(accelerator_check.NO_GPU_NOTE) < lines.index(
        "  cost of exactness: training x1.25"
    )


def test_graphs_steps_set_command_buffers_beside_the_default_run():
    timed = {
        "deterministic ops on": (0.25, 0.04),
        "max, command buffers off": (0.30, 0.05),
        "max, command buffers with loops": (0.125, 0.02),
    }
    lines = accelerator_check.summary([], {"max": 0.26}, "gpu:H200 x1", timed)
    at = lines.index(
        "MNIST max, epoch 2, training seconds by XLA:GPU command buffers (CUDA graphs)"
    )
    assert [line.split() for line in lines[at + 1 : at + 4]] == [
        ["default", "(deterministic", "ops", "on)", "0.250"],
        ["command", "buffers", "off", "0.300", "(x1.20)"],
        ["command", "buffers", "with", "loops", "0.125", "(x0.50)"],
    ]
    del timed["deterministic ops on"]  # then the sweep's max is the default
    lines = accelerator_check.summary([], {"max": 0.25}, "gpu:H200 x1", timed)
    assert lines[-3].split() == ["default", "(the", "sweep)", "0.250"]
    assert not any("command buffers" in line for line in accelerator_check.summary([], {}, "x"))


def test_a_step_past_its_limit_may_stop_by_itself_first(tmp_path, monkeypatch):
    """SIGINT first: a sweep writes its report, pytest its summary; the log's last line says so."""
    monkeypatch.setattr(accelerator_check, "STOP_GRACE_SECONDS", 10)
    saves = (
        "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
        "    print('saved what it had')\n    raise SystemExit(130)"
    )
    step = accelerator_check.Step("saves", [sys.executable, "-c", saves], 2)
    accelerator_check.run_step(step, str(tmp_path / "saves.log"))
    assert (step.status, step.note) == ("timed out after 2 s", "saved what it had")
    assert step.seconds < 10


def test_output_that_is_not_utf8_is_read_and_the_device_line_found(tmp_path):
    code = "import sys; sys.stdout.buffer.write(b'gpu:Fake x1\\n\\xff stray\\n')"
    step = accelerator_check.Step("device", [sys.executable, "-c", code], 60, "device")
    accelerator_check.run_step(step, str(tmp_path / "device.log"))
    assert step.note == "gpu:Fake x1"


def test_a_check_stopped_from_outside_leaves_its_summary_and_stops_its_step(tmp_path, monkeypatch):
    import signal
    import threading

    pid_file = tmp_path / "pid"
    sleeper = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )

    def fake_plan(out, data_dir, workers):
        return [
            accelerator_check.Step(
                "device", [sys.executable, "-c", "print('gpu:Fake x1')"], 60, "device"
            ),
            accelerator_check.Step("tests", [sys.executable, "-c", sleeper], 600, "tests"),
            accelerator_check.Step("bench", [sys.executable, "-c", "print('ran')"], 600, "bench"),
        ]

    monkeypatch.setattr(accelerator_check, "plan", fake_plan)
    seen_while_running = []

    def stop_when_running():
        for _ in range(200):
            summary = tmp_path / "out" / "summary.txt"
            if pid_file.exists() and summary.exists():
                seen_while_running.append(summary.read_text())
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    threading.Thread(target=stop_when_running, daemon=True).start()
    code = accelerator_check.run(str(tmp_path / "out"), None, 1, ("tests", "bench"))
    assert code == 128 + signal.SIGTERM
    assert "tests" in seen_while_running[0] and "running" in seen_while_running[0]
    lines = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert lines[0] == "accelerator check on gpu:Fake x1"
    assert "stopped with the check" in lines[3] and "not run" in lines[4]
    _assert_gone(int(pid_file.read_text()))


def test_the_sweep_figures_leave_out_runs_stopped_in_epoch_1(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "results.csv").write_text(
        "pooler,epochs,train_seconds_per_epoch\nmax,2,0.25\ntdgs,1,4.29\navg,2,\n"
    )
    assert accelerator_check.sweep_seconds_per_epoch(str(tmp_path)) == {"max": 0.25}


def test_an_unnamed_device_is_unknown_not_a_cpu():
    timed = {"deterministic ops on": (0.25, 0.02)}
    lines = accelerator_check.summary([], {}, accelerator_check.UNNAMED_DEVICE, timed)
    assert accelerator_check.UNKNOWN_DEVICE_NOTE in lines
    assert accelerator_check.NO_GPU_NOTE not in lines


def test_a_relative_data_dir_reaches_the_steps_as_an_absolute_path(tmp_path, monkeypatch):
    # The steps run in the repository root: a data dir relative to the user's directory would
    # point elsewhere there (or into site-packages for an installed jaxpool).
    seen = {}

    def fake_plan(out, data_dir, workers):
        seen["data_dir"] = data_dir
        return []

    monkeypatch.setattr(accelerator_check, "plan", fake_plan)
    monkeypatch.setattr(accelerator_check, "check_data_dir", lambda data_dir, groups: None)
    monkeypatch.chdir(tmp_path)
    accelerator_check.run("out", "data", 1, ("sweep",))
    assert seen["data_dir"] == str(tmp_path / "data")
    accelerator_check.run("out2", "~/data", 1, ("sweep",))
    assert seen["data_dir"] == os.path.expanduser("~/data")
    accelerator_check.run("out3", "gs://bucket/tfds", 1, ("sweep",))
    assert seen["data_dir"] == "gs://bucket/tfds"


def test_the_tests_step_needs_a_checkouts_suite_and_pytest(tmp_path, monkeypatch):
    accelerator_check.check_tests(accelerator_check.GROUPS)  # this checkout has both
    monkeypatch.setattr(accelerator_check, "REPO_ROOT", str(tmp_path))  # as installed: no tests/
    accelerator_check.check_tests(("sweep", "bench"))  # not asked for: not checked
    with pytest.raises(
        ValueError,
        match=r"--check-steps tests: no test suite in .*tests \(the tests come with a checkout.*"
        r"leave the tests out: --check-steps determinism,sweep,paths,graphs,seeds,bench$",
    ):
        accelerator_check.check_tests(accelerator_check.GROUPS)
    with pytest.raises(ValueError, match=r"--check-steps tests: no test suite"):
        accelerator_check.run(str(tmp_path / "out"), None, 1, ("tests",))
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(accelerator_check, "REPO_ROOT", str(ROOT))
    find_spec = accelerator_check.importlib.util.find_spec
    monkeypatch.setattr(
        accelerator_check.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "xdist" else find_spec(name, *args),
    )
    with pytest.raises(ValueError, match=r"--check-steps tests: pytest-xdist not installed \(pip"):
        accelerator_check.check_tests(("tests",))
