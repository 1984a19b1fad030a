"""The Tune trainable: one trial trains one variant with DeepSpeed on Ray Train.

The trial's own process holds no CPU (the workers need them), launches a
`TorchTrainer` whose workers run `evolve.harness.train_worker`, forwards the
learning curve to Tune, and, once the workers are gone, has a fresh
zygote child run the sealed evaluation on the saved weights. Any failure of the variant ends as a
normal final result with status "failed" and a one-line reason, so the
searcher records it and the search goes on.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

from evolve import zygote
from evolve.harness import one_line

# Resources of the trial's own process: no CPU, so that a 1-CPU worker per
# trial fits on every core. Ray refuses {"CPU": 0} alone; a token amount of
# memory makes the request valid without holding anything back.
TRIAL_RESOURCES = {"CPU": 0, "memory": 1024 * 1024}


def _failure_reason(out_dir: Path, exc: BaseException) -> str:
    """Returns the workers' own one-line reason if they wrote one, else the exception's."""
    for path in sorted(out_dir.glob("error-rank*.txt")):
        text = path.read_text().strip()
        if text:
            return text
    return one_line(exc)


def train_variant(config: dict) -> dict:
    """Trains and evaluates one variant; returns the final result dict."""
    from ray.train import RunConfig, ScalingConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    from evolve.fasttrain import RendezvousConfig, make_trainer

    t0 = time.time()
    out_dir = Path(config["out_dir"])
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a retried trial starts from nothing
    out_dir.mkdir(parents=True)
    res = config["resources"]
    use_gpu = res["gpus_per_worker"] > 0
    per_worker = {"CPU": res["cpus_per_worker"]}
    if use_gpu:
        per_worker["GPU"] = res["gpus_per_worker"]
    trainer = make_trainer(
        train_loop_per_worker=_worker_entry,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=res["workers"], use_gpu=use_gpu,
                                     resources_per_worker=per_worker),
        torch_config=RendezvousConfig(),
        run_config=RunConfig(name=f"{config['variant_id']}-{config['trial_id']}",
                             storage_path=config["train_storage"],
                             callbacks=[TuneReportCallback()]),
    )
    result = {"variant_id": config["variant_id"], "status": "failed", "failure_reason": None,
              "fitness": None, "metrics": {}, "summary": {}}
    # The sealed evaluation starts as soon as rank 0 has written its summary,
    # while Ray Train is still tearing the worker group down.
    evaluation = _EvaluationWhenReady(out_dir, config)
    try:
        trainer.fit()
        result["summary"] = json.loads((out_dir / "summary.json").read_text())
    except Exception as e:  # the variant failed in training: record why, keep searching
        result["failure_reason"] = _failure_reason(out_dir, e)
    metrics, error = evaluation.wait(trained=bool(result["summary"]))
    if result["summary"]:
        if error is None:
            result.update(status="completed", metrics=metrics, fitness=metrics[config["metric"]],
                          eval_seconds=evaluation.seconds)
        else:  # sealed files changed, or the weights do not load
            result["failure_reason"] = f"sealed evaluation: {error}"
    result["trial_seconds"] = time.time() - t0
    result["trial_started_at"] = t0
    shutil.rmtree(out_dir / "model", ignore_errors=True)  # weights are not kept
    return result


class _EvaluationWhenReady:
    """Runs the sealed evaluation in a zygote child once summary.json appears."""

    POLL_S = 0.05

    def __init__(self, out_dir: Path, config: dict):
        self.out_dir, self.config = out_dir, config
        self.metrics, self.error, self.seconds = None, None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not (self.out_dir / "summary.json").exists():
            if self._stop.wait(self.POLL_S):
                return
        t0 = time.time()
        try:
            self.metrics = zygote.call("evolve.evaluation:evaluate_saved", {
                "model_dir": str(self.out_dir / "model"), "experiment_root": self.config["experiment_root"],
                "heldout": str(Path(self.config["data_dir"]) / "heldout.bin"),
                "task": self.config["task"], "sealed": self.config["sealed"]},
                log=str(self.out_dir / "evaluate.log"))
        except Exception as e:
            self.error = str(e) if isinstance(e, zygote.ChildFailed) else one_line(e)
        self.seconds = time.time() - t0

    def wait(self, trained: bool) -> tuple[dict | None, str | None]:
        """Returns (metrics, error); stops waiting at once if training failed."""
        if not trained:
            self._stop.set()
        self._thread.join()
        if trained and self.metrics is None and self.error is None:
            self.error = "the evaluation did not run (no summary.json)"
        return self.metrics, self.error


def _worker_entry(config: dict) -> None:
    from evolve.harness import train_worker

    train_worker(config)


def trainable(config: dict) -> None:
    """The Tune function trainable: reports the curve, then the final result."""
    from ray import tune

    result = train_variant(config)
    tune.report({"done": True, "result_json": json.dumps(result)})
