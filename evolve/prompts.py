"""Prompt building for the LLM operator: deterministic for a given state.

Only mutable files go into a prompt; sealed files and held-out data never
do (the searcher passes nothing else in, and `build_messages` refuses a
path it is told is sealed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

SYSTEM = """You improve the recipe that trains a small language model. You are \
one step of an evolutionary search: your change is trained under a fixed \
token budget and scored by a sealed held-out evaluation you cannot see or \
change. Lower held-out loss is better. Propose one focused change.

Answer in exactly this format:

RATIONALE: one paragraph: what you change and why it should help

FILE: <path of a mutable file>
<<<<<<< SEARCH
<exact lines of the current file>
=======
<the lines that replace them>
>>>>>>> REPLACE

Several FILE sections and several SEARCH/REPLACE blocks are allowed. To \
rewrite a whole file, put its full new text in one fenced block after its \
FILE line instead. Only the mutable files listed may be changed."""

NOTEBOOK_SYSTEM = """You keep the research notebook of an evolutionary search \
over training recipes. Rewrite it as at most 15 short bullet points: what was \
tried, what helped (with numbers), what failed and why, and what to try next. \
Answer with the notebook text only."""


@dataclass(frozen=True)
class Candidate:
    """A variant as the prompt shows it."""

    variant_id: str
    files: dict  # path -> text (mutable files only)
    fitness: float | None
    curve: list = field(default_factory=list)  # [[tokens, train_loss, dev_loss], ...]
    rationale: str = ""


def curve_summary(curve: list) -> str:
    """Returns a short text of a learning curve: first, middle and last points."""
    if not curve:
        return "no learning curve"
    picks = [curve[0], curve[len(curve) // 2], curve[-1]] if len(curve) > 2 else curve
    return "; ".join(f"{int(t):,} tokens: train {tr:.3f} dev {dv:.3f}" for t, tr, dv in picks)


def _files_block(files: dict) -> str:
    return "\n\n".join(f"FILE: {p}\n```\n{files[p].rstrip()}\n```" for p in sorted(files))


def build_messages(parent: Candidate, inspirations: list[Candidate], failures: list[str],
                   notebook: str, guidelines: str, metric: str, sealed: list[str] = ()) -> list[dict]:
    """Returns the chat messages asking for a child of `parent`."""
    for c in [parent, *inspirations]:
        leaked = [p for p in c.files if p in sealed]
        if leaked:
            raise ValueError(f"prompt: refusing to show sealed file(s) {leaked}")
    parts = [f"## Guidelines\n{guidelines.strip() or '(none)'}"]
    parts.append(f"## Research notebook\n{notebook.strip() or '(empty: nothing recorded yet)'}")
    fit = "not yet measured" if parent.fitness is None else f"{parent.fitness:.4f}"
    parts.append(f"## Parent {parent.variant_id}\n{metric}: {fit}\nlearning curve: "
                 f"{curve_summary(parent.curve)}\n\n{_files_block(parent.files)}")
    for c in inspirations:
        diff_files = {p: t for p, t in c.files.items() if parent.files.get(p) != t}
        parts.append(f"## Another strong variant {c.variant_id}\n{metric}: {c.fitness:.4f}\n"
                     f"what made it: {c.rationale or '-'}\nfiles that differ from the parent:\n\n"
                     f"{_files_block(diff_files) if diff_files else '(none)'}")
    if failures:
        parts.append("## Recent children that failed\n" + "\n".join(f"- {f}" for f in failures))
    parts.append(f"Mutable files: {', '.join(sorted(parent.files))}. "
                 f"Write one child of {parent.variant_id}.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def repair_messages(messages: list[dict], reply: str, error: str) -> list[dict]:
    """Returns the conversation extended with the rejected reply and its error."""
    return messages + [{"role": "assistant", "content": reply},
                       {"role": "user", "content": f"That reply was rejected: {error}\n"
                                                   "Answer again in the required format."}]


def notebook_messages(notebook: str, recent: list[dict]) -> list[dict]:
    """Returns the messages asking the agent to rewrite its notebook from recent results."""
    lines = "\n".join(json.dumps(r, sort_keys=True) for r in recent)
    return [{"role": "system", "content": NOTEBOOK_SYSTEM},
            {"role": "user", "content": f"Current notebook:\n{notebook.strip() or '(empty)'}\n\n"
                                        f"Results since the last update:\n{lines}"}]
