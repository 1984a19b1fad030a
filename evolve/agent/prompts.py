"""The LLM operator's prompts: pure functions of the search's state.

A prompt is built from the parent's mutable files (the workflow guidelines
first), its metrics and learning curve, one or two other strong variants,
the short reasons of recent failures, and the research notebook. Nothing
else goes in: the searcher hands over mutable files only, and
`child_messages` refuses a path it is told is sealed. The same state always
gives the same messages (golden-file tests pin them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from evolve.search.merge import BASE, CLOSE, OPEN, THEIRS

FORMAT = """Answer in exactly this format:

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

SYSTEM = """You improve the process that trains a model: its training code, \
settings and workflow guidelines. You are one step of an evolutionary \
search. Your child is trained under a fixed token budget and scored by a \
sealed held-out evaluation you cannot see or change; {direction} {metric} \
is better. Propose one focused change that should beat the parent.

""" + FORMAT

TUNABLE_FORMAT = """

Your child's numbers are then tuned by a classical optimiser over a few \
trials, and its best trial is its score. After the RATIONALE and before the \
first FILE you may declare up to {most} more numbers of {settings} to tune, \
one per line, each with a range (`log` for a log-uniform one, low above 0):

TUNABLE:
<key of {settings}, dotted when nested>: [<low>, <high>] log
<another key>: [<low>, <high>]

Each key must hold a number in {settings}; leave the block out when there \
is nothing to declare."""


def tunable_format(settings: str, most: int) -> str:
    """The paragraph the hybrid search adds to a prompt's format: how to declare tunable numbers."""
    return TUNABLE_FORMAT.format(settings=settings, most=most)


NOTEBOOK_SYSTEM = """You keep the research notebook of an evolutionary search \
over training recipes. Rewrite it as at most 15 short bullet points: what was \
tried, what helped (with numbers), what failed and why, and what to try next. \
Answer with the notebook text only."""

NOTEBOOK_MAX_CHARS = 4000  # a longer notebook reply is cut here


@dataclass(frozen=True)
class Candidate:
    """A variant as a prompt shows it."""

    variant_id: str
    files: dict  # path -> text, mutable files only
    fitness: float | None
    curve: list = field(default_factory=list)  # [[tokens, train_loss, dev_loss], ...]
    metrics: dict = field(default_factory=dict)
    rationale: str = ""
    speed: dict = field(default_factory=dict)  # tokens_per_s, mfu, trial_seconds where measured


def curve_summary(curve: list) -> str:
    """Returns a short text of a learning curve: first, middle and last points."""
    if not curve:
        return "none yet"
    picks = [curve[0], curve[len(curve) // 2], curve[-1]] if len(curve) > 2 else curve
    return "; ".join(f"{int(t):,} tokens: train {tr:.4f} dev {dv:.4f}" for t, tr, dv in picks)


def _fitness(metric: str, c: Candidate) -> str:
    value = "not measured yet (its trial is still running)" if c.fitness is None else f"{c.fitness:.4f}"
    extra = {k: v for k, v in sorted(c.metrics.items()) if k != metric}
    more = "".join(f", {k} {v:.4f}" if isinstance(v, float) else f", {k} {v}" for k, v in extra.items())
    return f"{metric}: {value}{more}" + speed_summary(c.speed)


def speed_summary(speed: dict) -> str:
    """Returns a line on how fast a variant trained, or nothing when it was not measured."""
    parts = []
    if speed.get("tokens_per_s"):
        parts.append(f"{speed['tokens_per_s']:,.0f} tokens/s")
    if speed.get("mfu") is not None:
        parts.append(f"MFU {speed['mfu']:.1%}")
    if speed.get("trial_seconds"):
        parts.append(f"{speed['trial_seconds']:.0f} s per trial")
    return ("\nspeed: " + ", ".join(parts)) if parts else ""


def _files_block(files: dict) -> str:
    return "\n\n".join(f"FILE: {p}\n```\n{files[p].rstrip()}\n```" for p in sorted(files))


def child_messages(parent: Candidate, inspirations: list[Candidate], failures: list[str],
                   notebook: str, metric: str, mode: str, guidelines: str = "guidelines.md",
                   sealed: tuple = (), tunable: str = "") -> list[dict]:
    """Returns the chat messages asking for one child of `parent`; `tunable`: `tunable_format`'s paragraph, if any."""
    for c in [parent, *inspirations]:
        leaked = sorted(p for p in c.files if p in sealed)
        if leaked:
            raise ValueError(f"prompt: refusing to show sealed file(s) {', '.join(leaked)}")
    direction = "lower" if mode == "min" else "higher"
    shown = {p: t for p, t in parent.files.items() if p != guidelines}
    parts = []
    if guidelines in parent.files:
        parts.append(f"## Workflow guidelines ({guidelines}, mutable like the other files)\n"
                     f"FILE: {guidelines}\n```\n{parent.files[guidelines].rstrip()}\n```")
    parts.append(f"## Research notebook\n{notebook.strip() or '(empty: nothing recorded yet)'}")
    parts.append(f"## Parent {parent.variant_id}\n{_fitness(metric, parent)}\n"
                 f"learning curve: {curve_summary(parent.curve)}\n\n{_files_block(shown)}")
    for c in inspirations:
        differ = {p: t for p, t in c.files.items() if parent.files.get(p) != t}
        parts.append(f"## Another strong variant {c.variant_id}\n{_fitness(metric, c)}\n"
                     f"what made it: {c.rationale or '-'}\nits files that differ from the parent's:\n\n"
                     f"{_files_block(differ) if differ else '(none)'}")
    if failures:
        parts.append("## Recent children that failed\n" + "\n".join(f"- {f}" for f in failures))
    parts.append(f"Mutable files: {', '.join(sorted(parent.files))}. "
                 f"Write one child of {parent.variant_id}; {direction} {metric} is better.")
    system = SYSTEM.format(direction=direction, metric=metric) + tunable
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


MERGE_SYSTEM = """You improve the process that trains a model: its training code, \
settings and workflow guidelines. You are one step of an evolutionary \
search, merging two strong variants that evolved apart from a common \
ancestor. Their changes were merged line by line; where both changed the \
same lines differently the merged files show a conflict region:

{open} ours (the first variant)
its lines
{base} base (the common ancestor)
the ancestor's lines
{theirs} theirs (the second variant)
its lines
{close}

Resolve every region: one SEARCH/REPLACE block per region, whose SEARCH \
text is the whole region, marker lines included, and whose REPLACE text is \
the lines the merged recipe should have (one side, or a combination that \
keeps what made each variant strong). Leave no marker line. The child is \
trained under a fixed token budget and scored by a sealed held-out \
evaluation; {direction} {metric} is better.

""" + FORMAT


def merge_messages(ours: Candidate, theirs: Candidate, base_id: str, files: dict, metric: str, mode: str,
                   sealed: tuple = ()) -> list[dict]:
    """Returns the chat messages asking the agent to resolve a merge's conflicts.

    `files`: path -> merged text of each file with conflict regions (the
    other merged files need nothing from the agent and are not shown).
    """
    leaked = sorted(p for p in [*ours.files, *theirs.files, *files] if p in sealed)
    if leaked:
        raise ValueError(f"prompt: refusing to show sealed file(s) {', '.join(sorted(set(leaked)))}")
    direction = "lower" if mode == "min" else "higher"
    parts = [f"## Ours: {ours.variant_id}\n{_fitness(metric, ours)}\nwhat made it: {ours.rationale or '-'}",
             f"## Theirs: {theirs.variant_id}\n{_fitness(metric, theirs)}\nwhat made it: {theirs.rationale or '-'}",
             f"## Their common ancestor (the base): {base_id}",
             f"## The merged files with conflicts\n\n{_files_block(files)}",
             f"Resolve every conflict region in {', '.join(sorted(files))}; {direction} {metric} is better."]
    system = MERGE_SYSTEM.format(open=OPEN, base=BASE, theirs=THEIRS, close=CLOSE, direction=direction,
                                 metric=metric)
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def repair_messages(messages: list[dict], reply: str, error: str, tunable: str = "") -> list[dict]:
    """Returns the conversation extended with the rejected reply and why it was rejected."""
    return messages + [{"role": "assistant", "content": reply},
                       {"role": "user", "content": f"That reply was rejected: {error}\n\n{FORMAT}{tunable}"}]


def notebook_messages(notebook: str, events: list[dict]) -> list[dict]:
    """Returns the messages asking the agent to rewrite its notebook from recent events."""
    lines = "\n".join(json.dumps(e, sort_keys=True) for e in events)
    return [{"role": "system", "content": NOTEBOOK_SYSTEM},
            {"role": "user", "content": f"Current notebook:\n{notebook.strip() or '(empty)'}\n\n"
                                        f"What happened since the last update:\n{lines}"}]


def prompt_hash(messages: list[dict]) -> str:
    """Returns a stable hash of a conversation (kept in the audit with each call)."""

    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
