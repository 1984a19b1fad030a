"""Runs a search on the Ray cluster this script is started on.

For the cluster launcher and Ray Jobs, which start a script rather than a
command:

    ray submit cluster/aws.yaml experiments/launch.py -- experiments/tiny_lm --run-dir s3://BUCKET/runs/tiny_lm
    RAY_AUTH_MODE=token ray job submit --working-dir . -- python experiments/launch.py experiments/tiny_lm budget.trials=32
    python experiments/launch.py --resume s3://BUCKET/runs/tiny_lm

The arguments are `evolve run`'s (or `--resume RUN`, for `evolve resume`).
The run is never kept in the job's working folder (Ray deletes that with
its session): without `--run-dir` it goes to the spec's `storage`, else to
~/evolve-runs/<name> on the head; a relative `--run-dir`, `storage` or
`--resume` folder is taken from the head's home when the script runs in a
job's working folder. The first line says where.
It joins the running cluster (RAY_ADDRESS, else `auto`) instead of starting
a local one, and finds the project beside it whether or not it is installed:
`ray submit` copies only this file to the head node, next to the project
that the cluster config's file_mounts put in ~/evolve.
"""

import contextlib
import io
import os
import sys
from pathlib import Path


def project_root() -> Path:
    for root in (Path(__file__).resolve().parents[1], Path.home() / "evolve", Path.cwd()):
        if (root / "evolve" / "cli.py").is_file():
            return root
    raise SystemExit("launch: cannot find the evolve project (looked beside this script, in ~/evolve and here)")


def in_job_folder(cwd: Path) -> bool:
    """Whether `cwd` is a Ray job's working folder (unpacked under the session's runtime_resources/)."""
    return "runtime_resources" in cwd.parts


def durable(path: str) -> str:
    """A run folder that outlives the job: a URI or an absolute path as given; a relative one from here,
    or from ~ when here is a Ray job's working folder."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str((Path.home() if in_job_folder(Path.cwd()) else Path.cwd()) / path)


def with_run_dir(argv: list[str]) -> tuple[list[str], str | None]:
    """Returns `evolve run`'s arguments with a durable --run-dir, and that folder (None if the spec does not load:
    `evolve run` then says why)."""
    from evolve import cli
    from evolve.spec import SpecError, load_spec

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # `evolve run` says it once, below
            args = cli.parser().parse_args(["run", *argv])
    except SystemExit:
        return argv, None
    if args.run_dir:
        target = durable(args.run_dir)
        i = argv.index("--run-dir") if "--run-dir" in argv else None
        if i is None:  # --run-dir=...
            return [a for a in argv if not a.startswith("--run-dir=")] + ["--run-dir", target], target
        return argv[:i] + argv[i + 2:] + ["--run-dir", target], target
    try:
        spec = load_spec(args.experiment, list(args.overrides))
    except (SpecError, OSError):
        return argv, None
    target = durable(cli.run_target(spec, None)) if spec.storage else str(Path.home() / "evolve-runs" / spec.name)
    return [*argv, "--run-dir", target], target


def main(argv: list[str]) -> int:
    root = project_root()
    sys.path.insert(0, str(root))
    os.environ.setdefault("RAY_ADDRESS", "auto")  # the cluster this runs on, never a new local one
    from evolve import cli

    if argv[:1] == ["--resume"]:
        if len(argv) > 1:
            argv = ["--resume", durable(argv[1]), *argv[2:]]
            print(f"launch: resuming the run kept in {argv[1]}", flush=True)
        return cli.main(["resume", *argv[1:]])
    # relative experiment folders are the project's, wherever this script was copied to
    if argv and not argv[0].startswith("-") and not Path(argv[0]).exists() and (root / argv[0]).exists():
        argv = [str(root / argv[0]), *argv[1:]]
    argv, target = with_run_dir(argv)
    if target:
        print(f"launch: the run is kept in {target}", flush=True)
    return cli.main(["run", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
