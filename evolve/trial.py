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
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from evolve import mfu, zygote
from evolve.evaluation import EvaluationError, max_weight_bytes, seal_model
from evolve.harness import one_line
from evolve.slots import LOST
from evolve.store import Store, atomic_write

# Resources of the trial's own process: no CPU, so that a 1-CPU worker per
# trial fits on every core. Ray refuses {"CPU": 0} alone; a token amount of
# memory makes the request valid without holding anything back.
TRIAL_RESOURCES = {"CPU": 0, "memory": 1024 * 1024}
SLOT_WAIT_S = 5.0  # long-poll on the slot board
KEPT = "kept"  # run_dir/kept/<variant>.json: a trial's final result, kept before the search records it


class TrialLost(RuntimeError):
    """A rank's process or worker was lost (killed, crashed, its node gone): Tune retries the trial."""


def train_variant(config: dict, on_report=None) -> dict:
    """Trains the variant on a free slot, then evaluates it; returns the final result dict."""
    import ray

    t0 = time.time()
    out_dir = Path(config["out_dir"])
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a retried trial starts from nothing
    out_dir.mkdir(parents=True)
    result = {"variant_id": config["variant_id"], "status": "failed", "failure_reason": None,
              "fitness": None, "metrics": {}, "summary": {}}
    board = ray.get_actor(config["slots"])  # named actors resolve within the search's job
    slot = None
    while slot is None:  # every slot busy or starting: wait (Tune runs no more trials than slots)
        slot = ray.get(board.acquire.remote(SLOT_WAIT_S))
    try:
        errors = _run_on_slot(board, slot, config, on_report)
    finally:  # also when Tune stops this trial: the relays then kill the job's children
        ray.get(board.release.remote(slot))
    if not errors:
        try:
            result["summary"] = json.loads((out_dir / "summary.json").read_text())
        except (OSError, ValueError) as e:
            errors = {0: f"rank 0 ended without a readable summary.json: {one_line(e)}"}
    if errors and next(iter(errors.values())).startswith(LOST):  # not the variant's doing
        raise TrialLost(next(iter(errors.values()))[len(LOST):])
    if errors:  # the variant failed in training: record why (the first rank to fail), keep searching
        result["failure_reason"] = next(iter(errors.values()))
        result["summary"] = {}
    if result["summary"]:
        t_eval = time.time()
        metrics, error = evaluate(out_dir, config)
        if error is None:
            result.update(status="completed", metrics=metrics, fitness=metrics[config["metric"]],
                          eval_seconds=time.time() - t_eval)
        else:  # sealed files changed, or the weights are not what the harness would have built
            result["failure_reason"] = f"sealed evaluation: {error}"
    result["trial_seconds"] = time.time() - t0
    r = config["resources"]
    result["gpu_hours"] = mfu.gpu_hours(result["trial_seconds"], r["workers"], r["gpus_per_worker"])
    result["trial_started_at"] = t0
    shutil.rmtree(out_dir / "model", ignore_errors=True)  # weights are not kept
    return result


def _run_on_slot(board, slot: int, config: dict, on_report) -> dict:
    """Posts the job, streams its curve to `on_report`; returns {rank: reason} of failed ranks, first failure first."""
    import ray

    job_id = uuid.uuid4().hex
    ray.get(board.put_job.remote(slot, {"id": job_id, "config": config,
                                        "world": config["resources"]["workers"]}))
    cursor, cancelled = 0, False
    while True:
        st = ray.get(board.wait.remote(slot, job_id, cursor, SLOT_WAIT_S))
        for point in st["reports"]:
            if on_report is not None:
                on_report(point)
        cursor = st["cursor"]
        if st["errors"] and not cancelled:  # one rank failed: stop the others' children
            ray.get(board.cancel.remote(slot, job_id))
            cancelled = True
        if st["done"]:
            return {int(r): e for r, e in st["errors"].items() if e != "cancelled"} or st["errors"]


def evaluate(out_dir: Path, config: dict) -> tuple[dict | None, str | None]:
    """Returns (metrics, None) or (None, one-line error) of the sealed evaluation of a trained trial.

    Every rank has exited (its supervisor answers only then), so nothing of
    the variant runs any more: the weights are copied out of the trial
    folder into a folder no sandbox sees, checked, and evaluated there in
    a fresh zygote child.
    """
    sealed_dir = Path(tempfile.mkdtemp(prefix="eval-", dir=zygote.folder()))
    try:
        model = seal_model(out_dir / "model", sealed_dir / "model", max_weight_bytes(config["task"]))
        metrics = zygote.call("evolve.evaluation:evaluate_saved", {
            "model_dir": str(model), "experiment_root": config["experiment_root"],
            "heldout": str(Path(config["data_dir"]) / "heldout.bin"),
            "task": config["task"], "sealed": config["sealed"]},
            log=str(out_dir / "evaluate.log"), search=config.get("search", ""))
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
    shutil.rmtree(path, ignore_errors=True)


def read_kept_result(path: Path) -> dict | None:
    """Returns the final result a trial kept in kept/, or None (none, or unreadable: train again)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and "status" in result else None


def trainable(config: dict) -> None:
    """The Tune function trainable: reports the curve, then the final result.

    A trial Tune restores (after a failure, or on resume) continues from
    its latest checkpoint when it has one. A trial whose variant already
    finished (its result kept in kept/, or recorded in the store) is
    not trained again: it reports what it has.
    """
    from ray import tune

    row = None if config.get("confirm") else Store(config["run_dir"]).result(config["variant_id"])
    if row is not None:  # it finished after Tune's last snapshot: nothing to train, the row stands
        curve = row["curve"] or [[0, float("inf"), float("inf")]]
        tune.report({"tokens": curve[-1][0], "train_loss": curve[-1][1], "dev_loss": curve[-1][2],
                     "done": True, "recorded_before": True})
        return
    # outside the trial's folder: the variant's process may write there, never here
    kept = Path(config["run_dir"]) / KEPT / f"{config.get('trial_key') or config['variant_id']}.json"
    result = read_kept_result(kept)
    if result is None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            config = {**config, "resume_from": checkpoint.path}  # the run's storage is this file system
        # a confirmation re-run reports no curve: no scheduler may stop it before its budget
        result = train_variant(config, on_report=None if config.get("confirm") else report_point)
        # kept before Tune hears of it: a driver that dies before recording it loses no training
        atomic_write(kept, json.dumps(result).encode())
    last = {}
    curve = (result.get("summary") or {}).get("curve") or []
    if curve:  # a scheduler reads its metric from every result, the final one too
        last = {"tokens": curve[-1][0], "train_loss": curve[-1][1], "dev_loss": curve[-1][2]}
    tune.report({**last, "done": True, "result_json": json.dumps(result)})
