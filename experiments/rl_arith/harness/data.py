"""Sealed: generates the arithmetic problems once per search.

A problem is a prompt of fixed width, such as "47+08=", and its answer,
such as "55"; a model answers with the digits and the end mark ";". With
task.reverse (the default) the answer's digits come least significant
first ("47+85=" is answered "231;"), the order in which carries run. Every
problem of the task's space (two operands below 10**digits, each operator
in task.ops) is in exactly one split: held-out, dev or train. The harness
trains only on the train split; the held-out split is hidden from the
variants and hashed. Bytes are the tokens: vocabulary 256.
"""

import json
import random
from pathlib import Path

VOCAB_SIZE = 256  # bytes
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def space(task):
    """Returns every problem of the task as (prompt, answer), in a fixed order."""
    digits, ops = int(task.get("digits", 2)), list(task.get("ops", ["+", "-"]))
    if not 1 <= digits <= 4:
        raise ValueError(f"task.digits: expected 1..4, got {digits!r}")
    unknown = [op for op in ops if op not in OPS]
    if not ops or unknown:
        raise ValueError(f"task.ops: expected some of {sorted(OPS)}, got {ops!r}")
    n, order = 10 ** digits, -1 if task.get("reverse", True) else 1
    return [(f"{a:0{digits}d}{op}{b:0{digits}d}=", _digits(OPS[op](a, b), order))
            for op in ops for a in range(n) for b in range(n)]


def _digits(value, order):
    """The answer as written: its sign first, then its digits, least significant first when order is -1."""
    return ("-" if value < 0 else "") + str(abs(value))[::order]


def sources(task):
    """Files the held-out split was cut from: none, the problems are generated."""
    return []


def prepare(out_dir, task):
    """Writes train.bin, dev.bin and heldout.bin (JSON lines of {"prompt", "answer"}) and meta.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = space(task)
    random.Random(int(task.get("split_seed", 0))).shuffle(problems)
    n_heldout, n_dev = int(task.get("heldout", 512)), int(task.get("dev", 256))
    if n_heldout < 1 or n_dev < 1 or n_heldout + n_dev >= len(problems):
        raise ValueError(f"task.heldout, task.dev: {n_heldout} + {n_dev} problems leave none to train "
                         f"on out of {len(problems)}")
    parts = {"heldout": problems[:n_heldout], "dev": problems[n_heldout:n_heldout + n_dev],
             "train": problems[n_heldout + n_dev:]}
    for name, part in parts.items():
        lines = "".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in part)
        (out / f"{name}.bin").write_bytes(lines.encode())
    meta = {"vocab_size": VOCAB_SIZE, "format": "problems", "end": ";",
            "prompt_bytes": len(problems[0][0]), "answer_bytes": max(len(a) for _, a in problems) + 1,
            **{f"{k}_problems": len(v) for k, v in parts.items()},
            "demo_problems": min(int(task.get("demos", 0)) or len(parts["train"]), len(parts["train"])),
            "train_tokens": sum(len(p) + len(a) + 1 for p, a in parts["train"])}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta
