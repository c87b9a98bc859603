"""README's code stays true: the usage example runs and produces what it says."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker} -->\n```[a-z]*\n(.*?)```\n<!-- /{marker} -->", text, re.S)
    assert match, f"README.md has no {marker} block"
    return match.group(1)


def test_usage_example_runs():
    namespace: dict = {}
    exec(compile(_block("usage-example"), "README usage example", "exec"), namespace)
    assert namespace["logits"].shape == (8, 10)
    assert namespace["variables"]["params"]["TDGSPool_0"]["temperature"].shape == (14, 14, 16)


def test_commands_present():
    assert "python -m pytest" in _block("test-command")
    assert "python -m train.main" in _block("main-command")
