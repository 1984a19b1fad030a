"""Sealed: the fitness of a trained model, its accuracy on the held-out problems.

Greedy decoding, answers checked by the sealed verifier. Runs after training,
in a process that never imports the variant's code.
"""

import importlib.util
import json
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("evolve_sealed_verifier", Path(__file__).with_name("verifier.py"))
verifier = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verifier)


@torch.no_grad()
def greedy(model, prompts, max_new):
    """Returns each prompt's greedy completion of max_new bytes (prompts of one width)."""
    x = torch.tensor([list(p.encode()) for p in prompts], dtype=torch.long)
    for _ in range(max_new):
        nxt = model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)
        x = torch.cat([x, nxt], dim=1)
    width = len(prompts[0].encode())
    return [bytes(row[width:].tolist()).decode("latin-1") for row in x]


def evaluate(model, heldout_path, task):
    """Returns {"heldout_accuracy": fraction correct, "heldout_format": fraction well-formed}."""
    problems = [json.loads(line) for line in Path(heldout_path).read_text().splitlines() if line]
    max_new = max(len(p["answer"]) for p in problems) + 1
    model.eval()
    right = formed = 0
    for i in range(0, len(problems), 256):
        chunk = problems[i:i + 256]
        for p, c in zip(chunk, greedy(model, [p["prompt"] for p in chunk], max_new)):
            right += verifier.correct(c, p["answer"])
            formed += verifier.parse(c) is not None
    return {"heldout_accuracy": right / len(problems), "heldout_format": formed / len(problems)}
