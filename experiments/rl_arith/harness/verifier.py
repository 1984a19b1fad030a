"""Sealed: the verifier. A completion is correct when it is the answer's digits and the end mark.

Training rewards are the recipe's to shape; this is what the fitness counts.
"""

import re

END = ";"  # a model ends its answer with this byte
_ANSWER = re.compile(r"-?[0-9]+")


def parse(completion: str):
    """Returns the integer a completion answers, or None if it is not digits followed by END."""
    text, end, _ = completion.partition(END)
    if not end or not _ANSWER.fullmatch(text):
        return None
    return int(text)


def correct(completion: str, answer: str) -> bool:
    """True when the completion states exactly the answer (no leading zeros, signs as written)."""
    text, end, _ = completion.partition(END)
    return bool(end) and text == answer and parse(completion) is not None
