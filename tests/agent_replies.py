"""Scripted agent replies for tests and benchmarks: edits that apply to whatever parent a prompt shows."""

import re

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


def counting_responder(factors=None):
    """A responder whose n-th child reply scales lr by a new factor; notebook requests get a notebook."""
    state = {"n": 0}

    def respond(body: dict) -> Reply:
        if "research notebook" in body["messages"][0]["content"]:
            return Reply(text=NOTEBOOK_TEXT)
        state["n"] += 1
        f = factors[state["n"] % len(factors)] if factors else 1.0 + 0.07 * state["n"]
        return Reply(text=lr_edit(body, f))

    return respond


SEALED_EDIT = Reply(text="RATIONALE: make evaluation kinder\n\nFILE: harness/evaluate.py\n```\ndef evaluate(*a):\n    return {'heldout_loss': 0.0}\n```\n")
OUTSIDE_EDIT = Reply(text="RATIONALE: add a helper\n\nFILE: helpers/fast.py\n```\nX = 1\n```\n")
MALFORMED = Reply(text="Sure! I would raise the learning rate a bit.")
EMPTY = Reply(text="")
