"""Runs a search on the Ray cluster this script is started on.

For the cluster launcher and Ray Jobs, which start a script rather than a
command:

    ray submit cluster/aws.yaml experiments/launch.py -- experiments/tiny_lm --run-dir s3://BUCKET/runs/tiny_lm
    ray job submit --working-dir . -- python experiments/launch.py experiments/tiny_lm budget.trials=32
    python experiments/launch.py --resume s3://BUCKET/runs/tiny_lm

The arguments are `evolve run`'s (or `--resume RUN`, for `evolve resume`).
It joins the running cluster (RAY_ADDRESS, else `auto`) instead of starting
a local one, and finds the project beside it whether or not it is installed:
`ray submit` copies only this file to the head node, next to the project
that the cluster config's file_mounts put in ~/evolve.
"""

import os
import sys
from pathlib import Path


def project_root() -> Path:
    for root in (Path(__file__).resolve().parents[1], Path.home() / "evolve", Path.cwd()):
        if (root / "evolve" / "cli.py").is_file():
            return root
    raise SystemExit("launch: cannot find the evolve project (looked beside this script, in ~/evolve and here)")


def main(argv: list[str]) -> int:
    root = project_root()
    sys.path.insert(0, str(root))
    os.environ.setdefault("RAY_ADDRESS", "auto")  # the cluster this runs on, never a new local one
    from evolve import cli

    if argv[:1] == ["--resume"]:
        return cli.main(["resume", *argv[1:]])
    # relative experiment folders are the project's, wherever this script was copied to
    if argv and not argv[0].startswith("-") and not Path(argv[0]).exists() and (root / argv[0]).exists():
        argv = [str(root / argv[0]), *argv[1:]]
    return cli.main(["run", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
