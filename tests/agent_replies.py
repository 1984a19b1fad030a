"""Scripted agent replies for tests and benchmarks: edits that apply to whatever parent a prompt shows."""

import re

from evolve.search.merge import BASE, CLOSE, OPEN, THEIRS
from tests.openai_server import Reply

NOTEBOOK_TEXT = "- raising lr helped once\n- nothing failed twice"


def parent_line(body: dict, key: str) -> str:
    """Returns the parent's `key: value ...` line from the prompt in a request body."""
    user = [m["content"] for m in body["messages"] if m["role"] == "user"][0]
    parent = user[user.index("## Parent "):]
    return re.search(rf"^{key}: .*$", parent, re.M).group(0)


def lr_edit(body: dict, factor: float = 1.3, extra: str = "") -> str:
    """A valid reply: scales the parent's learning rate by `factor`."""
    line = parent_line(body, "lr")
    value = float(line.split()[1])
    new = line.replace(line.split()[1], f"{value * factor:.6g}", 1)
    return (f"RATIONALE: scale the peak learning rate by {factor} (from {value:g}){extra}\n\n"
            f"FILE: config.yaml\n```yaml\n<<<<<<< SEARCH\n{line}\n=======\n{new}\n>>>>>>> REPLACE\n```\n")


def is_merge(body: dict) -> bool:
    """Whether a request asks the agent to resolve a merge's conflicts."""
    return "merging two strong variants" in body["messages"][0]["content"]


def conflict_regions(body: dict) -> list[tuple[str, list[str]]]:
    """Returns (file, the region's lines, markers included) of each conflict region a merge request shows."""
    user = [m["content"] for m in body["messages"] if m["role"] == "user"][0]
    out = []
    for m in re.finditer(rf"(?ms)^{re.escape(OPEN)}.*?^{re.escape(CLOSE)}$", user):
        path = re.findall(r"^FILE: (\S+)$", user[:m.start()], re.M)[-1]
        out.append((path, m.group(0).split("\n")))
    return out


def _mean_line(ours: str, theirs: str) -> str:
    """`key: x  # ...` and `key: y ...` -> `key: (x+y)/2  # ...` (ours' line when they are not one number each)."""
    a, b = (re.match(r"^(\s*[\w.]+:\s*)(\S+)(.*)$", ln) for ln in (ours, theirs))
    try:
        return f"{a[1]}{(float(a[2]) + float(b[2])) / 2:.6g}{a[3]}" if a and b and a[1] == b[1] else ours
    except ValueError:
        return ours


def merge_resolution(body: dict, leave_marker: bool = False) -> str:
    """A reply resolving every conflict region with the mean of both sides' numbers (ours' other lines);
    `leave_marker` keeps each region's last marker line."""
    blocks = []
    for path, region in conflict_regions(body):
        at = {m: next(i for i, ln in enumerate(region) if ln.startswith(m)) for m in (BASE, THEIRS)}
        ours, theirs = region[1:at[BASE]], region[at[THEIRS] + 1:-1]
        keep = [_mean_line(o, t) for o, t in zip(ours, theirs)] + ours[len(theirs):]
        keep += [region[-1]] if leave_marker else []
        blocks.append(f"FILE: {path}\n<<<<<<< SEARCH\n" + "\n".join(region) + "\n=======\n"
                      + "\n".join(keep) + "\n>>>>>>> REPLACE\n")
    return "RATIONALE: take the mean of both sides' values in each conflict\n\n" + "\n".join(blocks)


def counting_responder(factors=None):
    """A responder whose n-th child reply scales lr by a new factor; notebook requests get a notebook,
    merge requests a resolution that takes the mean of each conflict's numbers."""
    state = {"n": 0}

    def respond(body: dict) -> Reply:
        if "research notebook" in body["messages"][0]["content"]:
            return Reply(text=NOTEBOOK_TEXT)
        if is_merge(body):
            return Reply(text=merge_resolution(body))
        state["n"] += 1
        f = factors[state["n"] % len(factors)] if factors else 1.0 + 0.07 * state["n"]
        return Reply(text=lr_edit(body, f))

    return respond


SEALED_EDIT = Reply(text="RATIONALE: make evaluation kinder\n\nFILE: harness/evaluate.py\n```\ndef evaluate(*a):\n    return {'heldout_loss': 0.0}\n```\n")
OUTSIDE_EDIT = Reply(text="RATIONALE: add a helper\n\nFILE: helpers/fast.py\n```\nX = 1\n```\n")
MALFORMED = Reply(text="Sure! I would raise the learning rate a bit.")
EMPTY = Reply(text="")
