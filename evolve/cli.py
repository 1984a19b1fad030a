"""The `evolve` command: init, check, run, resume, status, show, checkout, review, approve, export-git, report."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from evolve import cliargs
from evolve.record import mirror
from evolve.spec import SpecError, load_run_spec, load_spec

# Every other evolve module is imported inside the command that needs it, on purpose: they bring in
# pyarrow and pandas (0.2 to 0.5 s) or Ray, torch and DeepSpeed (1.5 s and more), which `--help`, a bad
# argument and the commands that only read a run should not wait for.

EXIT_BAD_INPUT = 2


def run_target(spec, run_dir: str | None) -> str:
    """Where a new run is kept: --run-dir, else <spec.storage>/<name>, else runs/<name>."""
    if run_dir:
        return run_dir
    return f"{spec.storage.rstrip('/')}/{spec.name}" if spec.storage else str(Path("runs") / spec.name)


def cmd_run(args) -> int:
    from evolve.driver import run_search

    overrides = list(args.overrides) + ([f"trial.peak_tflops={args.peak_tflops}"] if args.peak_tflops else [])
    spec = load_spec(args.experiment, overrides)
    target = run_target(spec, args.run_dir)
    if mirror.is_uri(target) and mirror.Mirror(mirror.local_copy(target), target).exists("spec.yaml"):
        raise SpecError(f"--run-dir: {target!r} already holds a search; "
                        f"choose another folder, or continue it with: evolve resume {target}")
    args.resumable = target if mirror.is_uri(target) else str(Path(target).resolve())
    with mirror.session(target, fresh=True) as local:
        run_dir = str(Path(local).resolve())
        run_search(spec, run_dir, verbose=args.verbose)
        return _finish(run_dir, spec.budget.trials)


def cmd_resume(args) -> int:
    from evolve.driver import resume_search

    args.resumable = args.run_dir if mirror.is_uri(args.run_dir) else str(Path(args.run_dir).resolve())
    with mirror.session(args.run_dir) as local:
        run_dir = str(Path(local).resolve())
        resume_search(run_dir, verbose=args.verbose)
        return _finish(run_dir, load_run_spec(run_dir).budget.trials)


def _finish(run_dir: str, trials: int) -> int:
    from evolve.read.status import population, summary_lines
    from evolve.search import confirm

    pop = population(run_dir)
    print("\n".join(summary_lines(run_dir, pop)))
    verdict = confirm.load_verdict(run_dir)
    if verdict is not None:
        print("\n".join(confirm.lines(verdict)))
    if len(pop) < trials:  # Ctrl-C (Tune stops its trials and saves its state), or the operator ran dry
        print(f"evolve: the search stopped at {len(pop)} of {trials} variants; continue it with: "
              f"evolve resume {shlex.quote(run_dir)}")
    return 0


def cmd_status(args) -> int:
    from evolve.read.status import status_lines

    print("\n".join(status_lines(args.run_dir)))
    return 0


def cmd_review(args) -> int:
    from evolve.read.population import diff_against_parent
    from evolve.search import confirm

    v = confirm.load_verdict(args.run_dir)
    waiting = [c for c in (v or {}).get("candidates", []) if c["awaiting"] or c["flagged"]]
    if not waiting:
        print("review: no candidate awaits approval")
        return 0
    for c in waiting:
        state = "awaiting approval" if c["awaiting"] else ("approved" if c["approved"] else "not confirmed")
        flag = (f"; flagged: its single run was {c['jump_sigmas']:.1f} noise sds better than its parent's"
                if c["flagged"] else "")
        print(f"== {c['variant_id']} ({state}{flag})")
        print(f"   re-runs: {v['metric']} {c['mean']:.4f} [{c['low']:.4f}, {c['high']:.4f}] over {c['n']} seeds; "
              f"single run {c['single']:.4f}; parent {c['parent_id']} re-runs {c['parent_mean']:.4f}, "
              f"single run {c['parent_single']:.4f}; p = {c['p']:.3g}")
        print(diff_against_parent(args.run_dir, c["variant_id"]))
    return 0


def cmd_approve(args) -> int:
    from evolve.read.population import resolve
    from evolve.search import confirm

    vid = resolve(args.run_dir, args.variant)
    v = confirm.load_verdict(args.run_dir)
    c = next((c for c in (v or {}).get("candidates", []) if c["variant_id"] == vid), None)
    if c is None:
        raise SpecError(f"approve: {vid} has no confirmation re-runs; only re-run candidates can be approved")
    if not c["confirmed"]:
        raise SpecError(f"approve: {vid} is not a confirmed improvement (p = {c['p']:.3g} against its parent)")
    confirm.approve(args.run_dir, vid, args.note)
    print(f"approved {vid}")
    for line in confirm.lines(confirm.load_verdict(args.run_dir)):
        print(line)
    return 0


def show_notebook(run_dir: str, version: int | None) -> int:
    from evolve.agent import notebook

    versions = notebook.versions(run_dir)
    if not versions:
        print("notebook: empty (the LLM operator has not written one)")
        return 0
    chosen = versions[-1] if version is None else next((v for v in versions if v["version"] == version), None)
    if chosen is None:
        raise SpecError(f"--version: no notebook version {version} (have 1 to {len(versions)})")
    print(f"notebook version {chosen['version']} of {len(versions)}  model {chosen['model']}  "
          f"proposal {chosen['proposal_id']}")
    print(chosen["text"])
    return 0


def show_prompt(run_dir: str, vid: str, record: dict) -> None:
    from evolve.read.population import load_audit

    df = load_audit(run_dir)
    rows = df[df["proposal_id"] == record.get("proposal_id")].sort_values("attempt")
    if rows.empty:
        print("prompt: none (not written by the LLM operator)")
        return
    last = rows.iloc[-1]
    for m in last["messages"]:
        print(f"--- {m['role']} ---\n{m['content']}")
    print(f"--- reply ---\n{last['reply']}")


def tuning_lines(pop, vid: str, record: dict) -> list[str]:
    """Hybrid: a code variant's tuning (its trials and tuned best), or which code variant a tuning trial tuned."""
    from evolve.read.population import fmt

    cv = record.get("code_variant")
    if not cv:
        return []
    if cv != vid:
        return [f"tuning: trial {record.get('trial', '?')} of code variant {cv}: {json.dumps(record.get('values', {}), sort_keys=True)}"]
    table = pop.code_variants()
    rows = table[table["code_variant"] == vid]
    if rows.empty:
        return ["tuning: code variant, no trial finished yet"]
    r = rows.iloc[0]
    best = (f"best {r['best_variant']} {fmt(r['best_fitness'])} "
            f"{'(as written)' if r['best_variant'] == vid else json.dumps(r['best_values'], sort_keys=True)}"
            if r["best_variant"] else "every trial failed")
    return [f"tuning: code variant, {r['trials']} trials ({r['completed']} completed), "
            f"as written {fmt(r['as_written'])}, {best}"]


def cmd_show(args) -> int:
    from evolve.read.population import diff_against_parent, fmt, fmt_count, resolve
    from evolve.read.status import population
    from evolve.record.store import Store

    if args.variant == "notebook":
        return show_notebook(args.run_dir, args.version)
    vid = resolve(args.run_dir, args.variant)
    v = Store(args.run_dir).get_variant(vid)
    print(f"variant {vid}  island {v.island}  parents {', '.join(v.parents) or '-'}")
    print(f"operator: {v.operator}")
    print("record: " + json.dumps(v.record, sort_keys=True))
    pop = population(args.run_dir)
    rows = pop[pop["variant_id"] == vid]
    if rows.empty:
        print("result: not finished")
    else:
        r = rows.iloc[0]
        reason = r["failure_reason"] if isinstance(r["failure_reason"], str) else None
        print(f"status: {r['status']}" + (f"  reason: {reason}" if reason else ""))
        print(f"fitness: {fmt(r['fitness'])}  metrics: {json.dumps(r['metrics'], sort_keys=True)}")
        print(f"train {fmt(r['train_seconds'], 1)} s of {fmt(r['trial_seconds'], 1)} s; "
              f"tokens {fmt_count(r['tokens_trained'])}")
        curve = pop.curve(vid)
        step = max(1, -(-len(curve) // 8))  # at most about 8 points, the last always
        for p in curve[::-1][::step][::-1]:  # [tokens, train, dev] and, when recorded, step and lr
            more = "".join(f"  {k} {fmt_count(v) if k == 'step' else format(v, '.3g')}"
                           for k, v in zip(("step", "lr"), p[3:5]) if v is not None)
            print(f"  curve tokens {fmt_count(p[0]):>9}  train {p[1]:.4f}  dev {p[2]:.4f}{more}")
    for line in tuning_lines(pop, vid, v.record):
        print(line)
    print(diff_against_parent(args.run_dir, vid) or "(no diff: the seed)")
    if args.prompt:
        show_prompt(args.run_dir, vid, v.record)
    return 0


def cmd_checkout(args) -> int:
    from evolve.read.population import resolve
    from evolve.record.store import Store

    store = Store(args.run_dir)
    vid = resolve(args.run_dir, args.variant)
    dest = Path(args.dir)
    if dest.exists() and any(dest.iterdir()):
        raise SpecError(f"checkout: {str(dest)!r} exists and is not empty")
    store.materialize(store.get_variant(vid), dest)
    print(f"wrote variant {vid} to {dest}")
    return 0


def cmd_export_git(args) -> int:
    from evolve.read.gitexport import export_git

    out = export_git(args.run_dir, args.dir)
    champion = f"; main is the champion {out['champion']}" if out["champion"] else ""
    print(f"wrote {out['variants']} variants as commits to {args.dir} (a tag per variant id){champion}")
    return 0


def cmd_report(args) -> int:
    from evolve.read.report import write_report

    print(f"wrote {write_report(args.run_dir, args.out)}")
    return 0


def cmd_init(args) -> int:
    from evolve.create import CreateError, ask_and_write, write_empty_experiment, write_text_experiment

    target = Path(args.dir)
    if args.text and args.empty:
        raise CreateError("init: --text and --empty exclude each other; choose one")
    if args.text:
        written = write_text_experiment(target, Path(args.text))
    elif args.empty:
        written = write_empty_experiment(target)
    elif sys.stdin.isatty():
        written = ask_and_write(target)
    else:
        raise CreateError("init: no terminal to ask on; say --text FILE (an LM on your text) or --empty")
    print(f"wrote {target}: {', '.join(written)}")
    print(f"next: evolve check {shlex.quote(str(target))}, then evolve run {shlex.quote(str(target))}")
    return 0


def cmd_check(args) -> int:
    from evolve.check import check_experiment

    problems = check_experiment(args.experiment, args.overrides)
    for p in problems:
        print(f"evolve: error: {p}", file=sys.stderr)
    if problems:
        return EXIT_BAD_INPUT
    print(f"evolve check: {args.experiment} is ready to run")
    return 0


def _existing_run(path: str) -> str:

    if mirror.is_uri(path):
        return path  # looked at once it is fetched
    if not (Path(path) / "population").is_dir():
        raise argparse.ArgumentTypeError(f"{path!r} is not a run directory (no population/ folder)")
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evolve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a search from an experiment folder")
    r.add_argument("experiment", help="experiment folder (holding experiment.yaml) or the YAML file")
    r.add_argument("overrides", nargs="*", help="key=value spec overrides, e.g. budget.trials=4")
    r.add_argument("--run-dir", help="where the run is kept: a folder or an s3:// or gs:// URI "
                                     "(default <storage>/<name> with storage=..., else runs/<name>)")
    r.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak for MFU "
                                                     "(default: looked up by the GPU's name)")
    r.add_argument("--verbose", action="count", default=0, help="Ray Tune's status tables and its start-up "
                                                                 "messages instead of the progress line (twice: each trial's results too)")
    r.set_defaults(func=cmd_run)
    rs = sub.add_parser("resume", help="continue an interrupted search from its run folder")
    rs.add_argument("run_dir", help="the run folder of the search")
    rs.add_argument("--verbose", action="count", default=0, help="as with run")
    rs.set_defaults(func=cmd_resume)
    s = sub.add_parser("status", help="population so far: best, counts, cost")
    s.add_argument("run_dir", type=_existing_run)
    s.set_defaults(func=cmd_status)
    sh = sub.add_parser("show", help="a variant's diff, operator record and metrics; or the notebook")
    sh.add_argument("run_dir", type=_existing_run)
    sh.add_argument("variant", help="variant id or a unique prefix, or 'notebook' for the agent's notes")
    sh.add_argument("--prompt", action="store_true", help="also print the conversation that wrote it")
    sh.add_argument("--version", type=int, help="with 'notebook': that version (default the latest)")
    sh.set_defaults(func=cmd_show)
    c = sub.add_parser("checkout", help="write a variant's files to a folder")
    c.add_argument("run_dir", type=_existing_run)
    c.add_argument("variant")
    c.add_argument("dir")
    c.set_defaults(func=cmd_checkout)
    rv = sub.add_parser("review", help="candidates awaiting approval, with their re-runs and diffs")
    rv.add_argument("run_dir", type=_existing_run)
    rv.set_defaults(func=cmd_review)
    ap = sub.add_parser("approve", help="promote a confirmed candidate (needed when flagged or with confirm.approval)")
    ap.add_argument("run_dir", type=_existing_run)
    ap.add_argument("variant")
    ap.add_argument("--note", default="", help="why, kept with the approval")
    ap.set_defaults(func=cmd_approve)
    g = sub.add_parser("export-git", help="write the lineage as a git repository, a commit per variant")
    g.add_argument("run_dir", type=_existing_run)
    g.add_argument("dir", help="a new (or empty) folder for the repository")
    g.set_defaults(func=cmd_export_git)
    rp = sub.add_parser("report", help="write a self-contained HTML report: figures, tables, the champion's lineage")
    rp.add_argument("run_dir", type=_existing_run)
    rp.add_argument("-o", "--out", help="the HTML file to write (default RUN/report.html)")
    rp.set_defaults(func=cmd_report)
    i = sub.add_parser("init", help="write a new experiment folder (asks on a terminal, or from flags)")
    i.add_argument("dir", help="a new (or empty) folder for the experiment")
    i.add_argument("--text", metavar="FILE", help="a byte-level LM experiment on this UTF-8 text file")
    i.add_argument("--empty", action="store_true", help="an experiment whose every hook says what it must return")
    i.set_defaults(func=cmd_init)
    ck = sub.add_parser("check", help="validate an experiment folder: spec, harness, a smoke run, the evaluation")
    ck.add_argument("experiment", help="experiment folder (holding experiment.yaml) or the YAML file")
    ck.add_argument("overrides", nargs="*", help="key=value spec overrides, as for run")
    ck.set_defaults(func=cmd_check)
    return cliargs.add_examples(p)


def _in_storage(args) -> int:
    """Runs a command on a run folder in cloud storage: fetched first, what it writes sent back."""

    if args.command in ("run", "resume") or not mirror.is_uri(getattr(args, "run_dir", None) or ""):
        return args.func(args)
    with mirror.session(args.run_dir) as local:
        if not (local / "population").is_dir():
            raise FileNotFoundError(f"{args.run_dir}: not a run directory (no population/ folder)")
        args.run_dir = str(local)
        return args.func(args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback
    args = cliargs.parse(parser(), sys.argv[1:] if argv is None else list(argv))
    try:
        return _in_storage(args)
    except (SpecError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"evolve: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # cloud storage unreachable, refused, or no credentials
        print(f"evolve: error: {' '.join(str(e).split())[:300]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resumable = getattr(args, "resumable", None)
        hint = f"; continue it with: evolve resume {shlex.quote(resumable)}" if resumable else ""
        print(f"evolve: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
