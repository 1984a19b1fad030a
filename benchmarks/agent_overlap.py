"""Does the agent's thinking time reach the trials? A search against a slow endpoint.

Runs the same search twice on `experiments/tiny_lm`, 2 trials at once:
once with the heuristic operator (children in microseconds), once with the
LLM operator against a scripted OpenAI-compatible endpoint on 127.0.0.1
that takes `--latency` seconds per reply (10 s by default) and writes
valid edits. Prints, for each, the fraction of trial-slot time spent
training (sum of the trials' training spans / (trial window x slots)), the
fraction of slot time a trial held the slot, and the time free slots
waited for the agent; then the LLM run's training fraction over the
heuristic run's, both measured here.

    python benchmarks/agent_overlap.py --trials 10 --train-tokens 245760 --latency 10
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evolve.read.population import load_population  # noqa: E402
from evolve.spec import load_spec  # noqa: E402
from evolve.driver import run_search  # noqa: E402
from tests.agent_replies import counting_responder  # noqa: E402
from tests.openai_server import Reply, ScriptedOpenAI  # noqa: E402


def slow(responder, latency):
    def respond(body):
        reply = responder(body)
        return Reply(text=reply.text, delay_s=latency)
    return respond


def measure(run_dir: Path, overrides: list[str], concurrent: int) -> dict:
    spec = load_spec(ROOT / "experiments" / "tiny_lm", overrides)
    t0 = time.time()
    searcher = run_search(spec, run_dir, log=lambda line: None, verbose=0)
    wall = time.time() - t0
    pop = load_population(run_dir)
    done = pop[pop["status"] == "completed"]
    window = pop["finished_at"].max() - pop["started_at"].min()
    span = done["last_step_at"] - done["first_step_at"]
    held = pop["finished_at"] - pop["started_at"]
    llm = searcher.llm
    return {"trials": len(pop), "completed": len(done), "wall": wall, "window": window,
            "training": span.sum() / (window * concurrent), "held": held.sum() / (window * concurrent),
            "train_median": statistics.median(span), "trial_median": statistics.median(held),
            "waited": llm.wait_seconds if llm else 0.0, "fills": llm.heuristic_fills if llm else 0,
            "llm_children": int((pop["operator"] == "llm").sum()), "summary": llm.summary() if llm else ""}


def show(name: str, m: dict, concurrent: int) -> None:
    print(f"{name}: {m['trials']} trials ({m['completed']} completed), window {m['window']:.0f} s, "
          f"wall {m['wall']:.0f} s")
    print(f"  training fraction of slot time: {m['training']:.3f}   slot held by a trial: {m['held']:.3f}")
    print(f"  per trial, median: training span {m['train_median']:.1f} s of {m['trial_median']:.1f} s")
    if m["summary"]:
        print(f"  LLM children {m['llm_children']}; free slots waited {m['waited']:.1f} s for the agent "
              f"({m['waited'] / (m['window'] * concurrent):.3f} of slot time); heuristic fills {m['fills']}")
        print(f"  {m['summary']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--train-tokens", type=int, default=245_760)
    ap.add_argument("--latency", type=float, default=10.0, help="seconds the endpoint takes per reply")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="evolve-bench-"))
    common = ["confirm.top=0", f"budget.trials={args.trials}", f"budget.concurrent={args.concurrent}",
              f"budget.train_tokens={args.train_tokens}"]
    heur = None
    if not args.skip_baseline:
        heur = measure(base / "heuristic", common, args.concurrent)
        show("heuristic operator", heur, args.concurrent)
    with ScriptedOpenAI(slow(counting_responder(), args.latency)) as server:
        llm = measure(base / "llm", common + [
            "operator.kind=llm", f"operator.base_url={server.url}", "operator.model=scripted",
            "operator.notebook_every=0"], args.concurrent)
    show(f"LLM operator, endpoint answering in {args.latency:g} s", llm, args.concurrent)
    if heur:
        print(f"training fraction, LLM run / heuristic run: {llm['training'] / heur['training']:.3f}")
        print(f"slot held by a trial, LLM run / heuristic run: {llm['held'] / heur['held']:.3f}")


if __name__ == "__main__":
    main()
