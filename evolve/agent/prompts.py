"""The LLM operator's prompts: pure functions of the search's state.

A child prompt is built from the parent's mutable files (the workflow
guidelines first), the task's facts (what the harness and the spec fix: the
token budget and the optimizer steps the parent's settings buy, the
parameter cap and the parent's parameter count, the evaluation's context,
the corpus, the parent's speed), the parent's metrics and learning curve
(CURVE_POINTS points with step and learning rate), the other strong variants
as diffs against the parent, the failures and stops of the parent's other
children, the changes already in flight, the short reasons of recent
failures, and the research notebook. Nothing else goes in: the searcher
hands over mutable files and recorded numbers only, and `child_messages`
refuses a path it is told is sealed. A prompt over its character budget
loses the inspirations' diffs first, then curve points (never the facts or
the parent's files), and says what it left out. The same state always gives
the same messages (golden-file tests pin them).
"""

from __future__ import annotations

import difflib
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
CURVE_POINTS = 8  # learning-curve points a prompt shows (all when fewer), evenly spread, first and last kept
MIN_CURVE_POINTS = 2  # the fewest a prompt over its budget thins the curve to (first and last)
REASON_CHARS = 300  # a failure's reason or a change's rationale, at most, in a prompt


@dataclass(frozen=True)
class Candidate:
    """A variant as a prompt shows it."""

    variant_id: str
    files: dict  # path -> text, mutable files only
    fitness: float | None
    curve: list = field(default_factory=list)  # [[tokens, train_loss, dev_loss, step, lr], ...] (or 3 columns)
    metrics: dict = field(default_factory=dict)
    rationale: str = ""
    speed: dict = field(default_factory=dict)  # tokens_per_s, mfu, trial_seconds where measured


@dataclass(frozen=True)
class TaskFacts:
    """What the harness and the spec fix for a child: declared or measured, never read from a variant's output.

    The steps are the harness's arithmetic (`evolve.rank.lm.plan_steps`) on
    the parent's settings, or the number the harness recorded in the
    parent's trial; `steps_how` says which, and how it was counted.
    """

    train_tokens: int  # budget.train_tokens
    param_cap: int  # task_limit(task, "param_cap")
    eval_seq_len: int  # task_limit(task, "eval_seq_len")
    corpus: str  # the corpus's name
    split_tokens: int | None = None  # the training split's size; None: the data is not prepared yet
    steps: int | None = None  # optimizer steps the parent's settings buy
    steps_how: str = ""  # e.g. "16 sequences x 64 tokens x 1 worker x 1 micro-batch per step ..."
    parent_params: int | None = None  # the parent's parameter count, as its trial measured it


def curve_picks(n: int, k: int = CURVE_POINTS) -> list[int]:
    """Returns the indices of `k` evenly spread points of `n` (all when n <= k), the first and last included."""
    if n <= k:
        return list(range(n))
    if k < 2:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _num(v, fmt: str) -> str:
    if v is None:
        return "-"
    return str(int(v)) if fmt == "step" else format(float(v), fmt)


def curve_table(curve: list, k: int = CURVE_POINTS) -> str:
    """Returns up to `k` evenly spread points of a learning curve as a small table with step and lr.

    A point is [tokens, train_loss, dev_loss] and, when recorded, step and lr ("-" when not).
    """
    if not curve:
        return "learning curve: none yet"
    picks = curve_picks(len(curve), k)
    rows = [f"{_num(p[3] if len(p) > 3 else None, 'step'):>7} {int(p[0]):>12,} "
            f"{_num(p[4] if len(p) > 4 else None, '.3e'):>10} {p[1]:>8.4f} {p[2]:>8.4f}"
            for p in (curve[i] for i in picks)]
    shown = "every point" if len(picks) == len(curve) else f"{len(picks)} of {len(curve)} points, evenly spread"
    return (f"learning curve ({shown}):\n```\n{'step':>7} {'tokens':>12} {'lr':>10} {'train':>8} {'dev':>8}\n"
            + "\n".join(rows) + "\n```")


def _fitness(metric: str, c: Candidate, speed: bool = True) -> str:
    value = "not measured yet (its trial is still running)" if c.fitness is None else f"{c.fitness:.4f}"
    extra = {k: v for k, v in sorted(c.metrics.items()) if k != metric}
    more = "".join(f", {k} {v:.4f}" if isinstance(v, float) else f", {k} {v}" for k, v in extra.items())
    return f"{metric}: {value}{more}" + (speed_summary(c.speed) if speed else "")


def _speed_parts(speed: dict) -> list[str]:
    parts = []
    if speed.get("tokens_per_s"):
        parts.append(f"{speed['tokens_per_s']:,.0f} tokens/s")
    if speed.get("mfu") is not None:
        parts.append(f"MFU {speed['mfu']:.1%}")
    if speed.get("trial_seconds"):
        parts.append(f"{speed['trial_seconds']:.0f} s per trial")
    return parts


def speed_summary(speed: dict) -> str:
    """Returns a line on how fast a variant trained, or nothing when it was not measured."""
    parts = _speed_parts(speed)
    return ("\nspeed: " + ", ".join(parts)) if parts else ""


def facts_block(facts: TaskFacts, parent: Candidate) -> str:
    """Returns the task's facts for a child of `parent`: what the harness and the spec fix, with numbers."""
    f = facts
    steps = (f"the parent's settings buy {f.steps:,} optimizer steps" if f.steps is not None
             else "the parent's optimizer steps: not known yet")
    budget = f"- token budget: {f.train_tokens:,} training tokens per trial, counted by the harness; {steps}"
    if f.steps_how:
        budget += f" ({f.steps_how})"
    params = (f"the parent's model has {f.parent_params:,} (counted in its trial)" if f.parent_params is not None
              else "the parent's count: not measured yet (counted when its trial builds the model)")
    lines = [budget,
             f"- parameter cap: {f.param_cap:,} parameters (a larger model fails its trial); {params}",
             f"- evaluation context: {f.eval_seq_len:,} tokens (eval_seq_len); the sealed evaluation scores "
             f"held-out text in windows of this length, whatever length the recipe trains with"]
    if f.split_tokens:
        lines.append(f"- corpus: {f.corpus}; training split {f.split_tokens:,} tokens "
                     f"(the budget is {f.train_tokens / f.split_tokens:.2f} passes over it)")
    else:
        lines.append(f"- corpus: {f.corpus}; training split: not prepared yet")
    parts = _speed_parts(parent.speed)
    lines.append(f"- the parent's speed: {', '.join(parts)}" if parts
                 else "- the parent's speed: not measured yet")
    return "## The task (fixed by the harness and the spec)\n" + "\n".join(lines)


def inspiration_diff(parent_files: dict, files: dict, name: str) -> str:
    """Returns the unified diff of each file of `files` that differs from the parent's, or '' when none does."""
    out = []
    for path in sorted(set(parent_files) | set(files)):
        a, b = parent_files.get(path), files.get(path)
        if a == b:
            continue
        lines = difflib.unified_diff((a or "").splitlines(), (b or "").splitlines(),
                                     f"parent/{path}", f"{name}/{path}", n=2, lineterm="")
        out.append("\n".join(lines))
    return "\n".join(out)


def _oneline(text: str, limit: int = REASON_CHARS) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def siblings_block(parent_id: str, siblings) -> str:
    """Returns the parent's other children that failed or were stopped, each with its change and reason."""
    lines = [f"- {s['variant_id']} ({s['status']}): tried: {_oneline(s.get('change'), 160) or '-'}; "
             f"reason: {_oneline(s.get('reason')) or '-'}" for s in siblings]
    return (f"## Other children of {parent_id} that failed or were stopped\n" + "\n".join(lines))


def in_flight_block(in_flight) -> str:
    """Returns the changes already being tried or written, so that this child does not repeat them."""
    lines, writing = [], {}
    for r in in_flight:
        if r.get("rationale") is None:  # a request still being written: only its parent is known
            writing[r["parent"]] = writing.get(r["parent"], 0) + 1
            continue
        files = ", ".join(r.get("files") or []) or "-"
        lines.append(f"- a child of {r['parent']}, waiting for a trial (changes {files}): {_oneline(r['rationale'])}")
    lines += [f"- {n} child{'ren' if n > 1 else ''} of {p} being written now" for p, n in sorted(writing.items())]
    return ("## Changes already in flight (propose something different)\n" + "\n".join(lines))


def _files_block(files: dict) -> str:
    return "\n\n".join(f"FILE: {p}\n```\n{files[p].rstrip()}\n```" for p in sorted(files))


def prompt_chars(messages: list[dict]) -> int:
    """Returns the characters of a conversation's contents (the prompt-size budget counts these)."""
    return sum(len(m["content"]) for m in messages)


def child_messages(parent: Candidate, inspirations: list[Candidate], failures: list[str],
                   notebook: str, metric: str, mode: str, guidelines: str = "guidelines.md",
                   sealed: tuple = (), facts: TaskFacts | None = None, siblings=(), in_flight=(),
                   max_chars: int = 0, tunable: str = "") -> list[dict]:
    """Returns the chat messages asking for one child of `parent`.

    `siblings`: the parent's other children that failed or were stopped
    (dicts: variant_id, status, change, reason); `in_flight`: the changes
    being tried or written (dicts: parent, rationale (None while written),
    files). With `max_chars` (0: no budget) a longer prompt drops the
    inspirations' diffs (the last inspiration's first), then thins the
    curve down to MIN_CURVE_POINTS, and says what it left out; the facts,
    the parent's files and everything else always stay. `tunable`: `tunable_format`'s
    paragraph, if any.
    """
    for c in [parent, *inspirations]:
        leaked = sorted(p for p in c.files if p in sealed)
        if leaked:
            raise ValueError(f"prompt: refusing to show sealed file(s) {', '.join(leaked)}")
    diffs = len(inspirations)
    points = min(CURVE_POINTS, len(parent.curve))
    while True:
        messages = _child_messages(parent, inspirations, failures, notebook, metric, mode, guidelines, facts,
                                   siblings, in_flight, diffs, points, max_chars, tunable)
        if not max_chars or prompt_chars(messages) <= max_chars:
            return messages
        if diffs > 0:
            diffs -= 1
        elif points > MIN_CURVE_POINTS:
            points = max(MIN_CURVE_POINTS, points - 2)
        else:
            return messages  # over budget still: the facts and the parent's files are never left out


def _child_messages(parent, inspirations, failures, notebook, metric, mode, guidelines, facts, siblings,
                    in_flight, diffs: int, points: int, max_chars: int, tunable: str = "") -> list[dict]:
    direction = "lower" if mode == "min" else "higher"
    shown = {p: t for p, t in parent.files.items() if p != guidelines}
    parts = []
    if guidelines in parent.files:
        parts.append(f"## Workflow guidelines ({guidelines}, mutable like the other files)\n"
                     f"FILE: {guidelines}\n```\n{parent.files[guidelines].rstrip()}\n```")
    if facts is not None:
        parts.append(facts_block(facts, parent))
    parts.append(f"## Research notebook\n{notebook.strip() or '(empty: nothing recorded yet)'}")
    parts.append(f"## Parent {parent.variant_id}\n{_fitness(metric, parent, speed=facts is None)}\n"
                 f"{curve_table(parent.curve, points)}\n\n{_files_block(shown)}")
    if siblings:
        parts.append(siblings_block(parent.variant_id, siblings))
    if in_flight:
        parts.append(in_flight_block(in_flight))
    for i, c in enumerate(inspirations):
        head = (f"## Another strong variant {c.variant_id}\n{_fitness(metric, c)}\n"
                f"what made it: {c.rationale or '-'}\n")
        if i >= diffs:
            parts.append(head + "its diff against the parent: left out (prompt budget)")
            continue
        diff = inspiration_diff(parent.files, c.files, c.variant_id)
        parts.append(head + (f"its diff against the parent:\n```diff\n{diff}\n```" if diff
                             else "its diff against the parent: none (the same files)"))
    if failures:
        skip = tuple(s["variant_id"] for s in siblings)  # shown above with their parent's other children
        shown_failures = [f for f in failures if not (skip and f.startswith(skip))]
        if shown_failures:
            parts.append("## Recent children that failed\n" + "\n".join(f"- {f}" for f in shown_failures))
    left = []
    if diffs < len(inspirations):
        left.append(f"the diffs of {len(inspirations) - diffs} other strong variant(s) (their scores and "
                    f"rationales are kept)")
    full = min(CURVE_POINTS, len(parent.curve))
    if points < full:
        left.append(f"{full - points} of the parent's {full} learning-curve points")
    if left:
        parts.append(f"## Left out to keep this prompt under {max_chars:,} characters\n"
                     + "\n".join(f"- {x}" for x in left))
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
