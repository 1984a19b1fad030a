"""The Tune trainable: one trial trains one variant with DeepSpeed on a warm slot.

The trial's own process holds no CPU (the slots' Ray Train workers hold
them). It takes a free slot from the search's `SlotBoard`, posts the
variant, forwards the learning curve to Tune, and has a fresh zygote child
run the sealed evaluation on the saved weights as soon as rank 0 has
written them. Any failure of the variant ends as a normal final result
with status "failed" and a one-line reason, so the searcher records it and
the search goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from evolve.errors import one_line
from evolve.messages import RecordError, TrialConfig, TrialOutcome
from evolve.rank import mfu
from evolve.record.store import Store, atomic_write
from evolve.record.weights import keep_weights
from evolve.trial.evaluation import EvaluationError, max_weight_bytes, seal_model
from evolve.trial.board import LOST
from evolve.warm import zygote

# Ray is imported inside the functions Tune runs: this module's pure parts (outcome, the checkpoint
# checks) import without it.

# Resources of the trial's own process: no CPU, so that a 1-CPU worker per
# trial fits on every core. Ray refuses {"CPU": 0} alone; a token amount of
# memory makes the request valid without holding anything back.
TRIAL_RESOURCES = {"CPU": 0, "memory": 1024 * 1024}
SLOT_WAIT_S = 5.0  # long-poll on the slot board
MAX_SUMMARY_BYTES = 64 << 20  # rank 0's summary.json: the curve and the rank's numbers
KEPT = "kept"  # run_dir/kept/<variant>.json: a trial's final result, kept before the search records it


class TrialLost(RuntimeError):
    """A rank's process or worker was lost (killed, crashed, its node gone): Tune retries the trial."""


def train_variant(config: TrialConfig, on_report=None) -> TrialOutcome:
    """Trains the variant on a free slot, then evaluates it; returns the trial's outcome."""
    import ray

    t0 = time.time()
    out_dir = Path(config.out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a retried trial starts from nothing
    out_dir.mkdir(parents=True)
    board = ray.get_actor(config.slots)  # named actors resolve within the search's job
    slot = None
    while slot is None:  # every slot busy or starting: wait (Tune runs no more trials than slots)
        slot = ray.get(board.acquire.remote(SLOT_WAIT_S))
    final: list[Path] = []  # the sealed copy of the final checkpoint, for children to inherit
    try:
        errors = _run_on_slot(board, slot, config, on_report, final)
    finally:  # also when Tune stops this trial: the relays then kill the job's children
        ray.get(board.release.remote(slot))
    summary = {}
    if not errors:
        try:
            if (out_dir / "summary.json").stat().st_size > MAX_SUMMARY_BYTES:
                raise ValueError(f"it is over {MAX_SUMMARY_BYTES:,} bytes")
            summary = json.loads((out_dir / "summary.json").read_text())
            if not isinstance(summary, dict):
                raise ValueError("it is not a mapping")
        except (OSError, ValueError) as e:
            errors = {0: f"rank 0 ended without a readable summary.json: {one_line(e)}"}
    metrics, eval_error, t_eval = None, None, time.time()
    if not errors:
        metrics, eval_error = evaluate(out_dir, config)
    result = outcome(errors, summary, metrics, eval_error, config.metric)
    for sealed in final:
        if result.status == "completed":
            keep_weights(Path(config.run_dir), config.variant_id, sealed, config.inherited_tokens + config.train_tokens)
        shutil.rmtree(sealed.parent, ignore_errors=True)
    if config.inherited_from:
        result = result.replace(inherited_from=config.inherited_from, tokens_inherited=config.inherited_tokens)
    seconds = time.time() - t0
    r = config.resources
    shutil.rmtree(out_dir / "model", ignore_errors=True)  # weights are not kept
    return result.replace(variant_id=config.variant_id, trial_seconds=seconds, trial_started_at=t0,
                          eval_seconds=time.time() - t_eval if result.status == "completed" else None,
                          gpu_hours=mfu.gpu_hours(seconds, r.workers, r.gpus_per_worker))


def _run_on_slot(board, slot: int, config: TrialConfig, on_report, final: list) -> dict:
    """Posts the job, streams its curve to `on_report`; returns {rank: reason} of failed ranks, first failure first."""
    import ray

    job_id = uuid.uuid4().hex
    ray.get(board.put_job.remote(slot, {"id": job_id, "config": config.to_dict(),
                                        "world": config.resources.workers}))
    cursor, cancelled, refused = 0, False, None
    out_dir = Path(config.out_dir)
    while True:
        st = ray.get(board.wait.remote(slot, job_id, cursor, SLOT_WAIT_S))
        for point in st["reports"]:
            refused = refused or point_refusal(point)
            if refused is None and "checkpoint" in point:
                try:
                    point = {**point, "checkpoint": str(seal_checkpoint(out_dir, point["checkpoint"]))}
                except CheckpointRefused as e:
                    refused = str(e)
                if refused is None and point.get("last") and config.keep_weights:  # kept for children, not Tune
                    final.append(Path(point.pop("checkpoint")))
            if on_report is not None and refused is None:
                on_report(point)
        cursor = st["cursor"]
        if (st["errors"] or refused) and not cancelled:  # one rank failed: stop the others' children
            ray.get(board.cancel.remote(slot, job_id))
            cancelled = True
        if refused and st["done"]:
            return {0: refused}
        if st["done"]:
            return {int(r): e for r, e in st["errors"].items() if e != "cancelled"} or st["errors"]


POINT_KEYS = frozenset({"step", "tokens", "train_loss", "dev_loss", "last", "lr", "tokens_per_s", "mfu", "checkpoint",
                        "dev_accuracy", "phase", "reward", "imported"})  # what the harness's loops report


def point_refusal(point: dict) -> str | None:
    """Returns why a curve point cannot be taken (None if it can): it came from the variant's process.

    Only the harness's keys, so nothing reaches Tune's own (`done`, `training_iteration`...).
    """
    unknown = sorted(set(point) - POINT_KEYS)
    if unknown:
        return f"the variant reported a curve point with keys the harness never sends ({', '.join(unknown[:3])})"
    return None


class CheckpointRefused(ValueError):
    """A checkpoint the variant's process reported is not one the harness writes; one line."""


def seal_checkpoint(out_dir: Path, reported: str) -> Path:
    """Copies a reported checkpoint out of the trial folder into a private folder; returns the copy.

    The variant's process is still running and owns the folder, so every
    step opens by descriptor without following links: `checkpoints/` in the
    trial folder, then `tokens-N` in it; the copy keeps links as links, and a
    copy holding any link or special file is refused. Tune then keeps the
    copy, so the trial process never copies, nor deletes, anything else;
    the original is removed from the trial folder, by descriptor.
    """
    p = Path(str(reported))
    if p.parent != out_dir / "checkpoints" or not p.name.startswith("tokens-") or not p.name[7:].isdigit():
        raise CheckpointRefused(f"the variant reported a checkpoint outside its folder ({str(reported)[:120]!r})")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    dest = Path(tempfile.mkdtemp(prefix="ckpt-", dir=zygote.folder())) / p.name
    try:
        top = os.open(out_dir, flags)
        try:
            ck = os.open("checkpoints", flags, dir_fd=top)
            try:
                fd = os.open(p.name, flags, dir_fd=ck)
                try:
                    shutil.copytree(f"/proc/self/fd/{fd}", dest, symlinks=True)
                finally:
                    os.close(fd)
                # the original goes (it counts against the variant's disk cap), removed by descriptor too:
                # a `checkpoints/` swapped for a link after the copy cannot send the removal elsewhere
                shutil.rmtree(p.name, dir_fd=ck, ignore_errors=True)
            finally:
                os.close(ck)
        finally:
            os.close(top)
    except OSError as e:
        shutil.rmtree(dest.parent, ignore_errors=True)
        raise CheckpointRefused(f"the variant's checkpoint {p.name} cannot be opened as a plain folder "
                                f"({os.strerror(e.errno) if e.errno else e})") from None
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            entry = Path(root) / name
            if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
                shutil.rmtree(dest.parent, ignore_errors=True)
                raise CheckpointRefused(f"the variant's checkpoint holds a link or a special file ({name[:60]!r})")
    return dest


def outcome(errors: dict, summary: dict, metrics: dict | None, eval_error: str | None, metric: str) -> TrialOutcome:
    """Returns the trial's outcome fields from what its ranks and its evaluation said (pure).

    A lost rank (killed from outside, its node gone) is not the variant's
    doing: TrialLost, and Tune retries the trial. The variant's own failure
    is recorded with the first failing rank's reason; a trained variant is
    completed with the sealed evaluation's metric, or failed with why the
    evaluation refused it.
    """
    if errors:
        first = next(iter(errors.values()))
        if first.startswith(LOST):
            raise TrialLost(first[len(LOST):])
        return TrialOutcome.failed(first)
    if eval_error is not None:  # sealed files changed, or the weights are not what the harness would build
        return TrialOutcome.failed(f"sealed evaluation: {eval_error}", summary=summary)
    return TrialOutcome("completed", fitness=metrics[metric], summary=summary, metrics=metrics)


def evaluate(out_dir: Path, config: TrialConfig) -> tuple[dict | None, str | None]:
    """Returns (metrics, None) or (None, one-line error) of the sealed evaluation of a trained trial.

    Every rank has exited (its supervisor answers only then), so nothing of
    the variant runs any more: the weights are copied out of the trial
    folder into a folder no sandbox sees, checked, and evaluated there in
    a fresh zygote child.
    """
    sealed_dir = Path(tempfile.mkdtemp(prefix="eval-", dir=zygote.folder()))
    try:
        model = seal_model(out_dir / "model", sealed_dir / "model", max_weight_bytes(config.task))
        metrics = zygote.call("evolve.trial.evaluation:evaluate_saved", {
            "model_dir": str(model), "experiment_root": config.experiment_root,
            "heldout": str(Path(config.data_dir) / "heldout.bin"),
            "task": config.task, "sealed": config.sealed},
            log=str(out_dir / "evaluate.log"), search=config.search)
        return metrics, None
    except zygote.ChildFailed as e:
        return None, str(e)
    except (EvaluationError, OSError) as e:
        return None, one_line(e)
    finally:
        shutil.rmtree(sealed_dir, ignore_errors=True)


def report_point(point: dict, end_time: bool = True) -> None:
    """Forwards a curve point to Tune, with the checkpoint the harness saved there if any.

    `end_time=False` leaves the tokens out of a trial's last point, so that a
    scheduler like PBT makes no decision where there is nothing to continue.
    """
    from ray import tune

    path = point.pop("checkpoint", None)
    if point.pop("last", False) and not end_time:
        point.pop("tokens", None)
    if path is None:
        tune.report(point)
        return
    tune.report(point, checkpoint=tune.Checkpoint.from_directory(path))  # copied into the run's storage
    # the private copy `seal_checkpoint` made, with the folder made for it
    shutil.rmtree(Path(path).parent if Path(path).parent.name.startswith("ckpt-") else path, ignore_errors=True)


def read_kept_result(path: Path) -> TrialOutcome | None:
    """Returns the outcome a trial kept in kept/, or None (none, or unreadable: train again)."""
    try:
        return TrialOutcome.from_json(path.read_text())
    except (OSError, RecordError):
        return None


def variant_files(config: TrialConfig) -> TrialOutcome | None:
    """Writes the variant's files again from the store if its work folder is gone; a failed outcome if it cannot.

    The searcher wrote them when it suggested the trial, but `work/` is not
    mirrored to a bucket: a trial Tune restores on another head (the first
    head's disk lost) finds the folder gone. A folder that is there is left
    as it is (no rank may write to it).
    """
    if Path(config.variant_dir).is_dir():
        return None
    store = Store(config.run_dir)
    try:
        store.materialize(store.get_variant(config.variant_id), config.variant_dir)
    except (KeyError, OSError, ValueError) as e:
        return TrialOutcome.failed(f"the variant's files cannot be written again from the store: {one_line(e)}")
    return None


def trainable(raw: dict) -> None:
    """The Tune function trainable: reports the curve, then the final result.

    A trial Tune restores (after a failure, or on resume) continues from
    its latest checkpoint when it has one. A trial whose variant already
    finished (its result kept in kept/, or recorded in the store) is
    not trained again: it reports what it has.
    """
    from ray import tune

    config = TrialConfig.from_dict(raw)  # checked: Tune's copy of what the searcher made
    row = None if config.confirm else Store(config.run_dir).result(config.variant_id)
    if row is not None:  # it finished after Tune's last snapshot: nothing to train, the row stands
        curve = row["curve"] or [[0, float("inf"), float("inf")]]
        tune.report({"tokens": curve[-1][0], "train_loss": curve[-1][1], "dev_loss": curve[-1][2],
                     "done": True, "recorded_before": True})
        return
    # outside the trial's folder: the variant's process may write there, never here
    kept = Path(config.run_dir) / KEPT / f"{config.key}.json"
    result = read_kept_result(kept)
    if result is None:
        result = variant_files(config)
    if result is None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            config = config.replace(resume_from=checkpoint.path)  # the run's storage is this file system
        # a confirmation re-run reports no curve: no scheduler may stop it before its budget
        result = train_variant(config, on_report=None if config.confirm else report_point)
        # kept before Tune hears of it: a driver that dies before recording it loses no training
        atomic_write(kept, result.to_json().encode())
    last = {}
    curve = result.summary.get("curve") or []
    if curve:  # a scheduler reads its metric from every result, the final one too
        last = {"tokens": curve[-1][0], "train_loss": curve[-1][1], "dev_loss": curve[-1][2]}
    tune.report({**last, "done": True, "result_json": result.to_json()})
