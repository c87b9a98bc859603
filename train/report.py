r"""``python -m train.report WORKDIR``: rebuilds a sweep's report from its run directories and
``sweep.json`` (no training); what it writes is described in :mod:`train.study.tables`."""

from __future__ import annotations

import os
import sys

from train import cli
from train.study.run_records import collect
from train.study.tables import check_report_dir, write

USAGE = "usage: python -m train.report WORKDIR  (a train.sweep workdir)"


def main(argv: list[str] | None = None) -> int:
    """``python -m train.report WORKDIR``: exit 0, or 2 with one line on stderr."""
    args = (sys.argv if argv is None else argv)[1:]
    if args in (["-h"], ["--help"]):
        cli.out(USAGE)
        return 0
    if len(args) != 1 or args[0].startswith("-"):
        print(f"error: expected one WORKDIR argument; {USAGE}", file=sys.stderr)
        return 2
    workdir = args[0]
    if not os.path.isdir(workdir):
        why = "is not a directory" if os.path.exists(workdir) else "does not exist"
        print(f"error: workdir {workdir} {why}", file=sys.stderr)
        return 2
    try:
        check_report_dir(workdir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not collect(workdir):
        print(f"error: no run directories under {os.path.join(workdir, 'runs')}", file=sys.stderr)
        return 2
    written = write(workdir)
    cli.out(f"report of {written['runs']} runs: {written['markdown']}, {written['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
