"""Sealed: builds the byte-level corpus splits once per search.

The corpus is any UTF-8 text file (task.corpus) or, by default, the Python
documentation that ships with Python (pydoc_data.topics, about 465 KB). It is
cut into contiguous blocks (train, dev, held-out) so no held-out sentence is
also trained on. Bytes are the tokens: vocabulary 256, nothing to download.
"""

import json
from pathlib import Path

import numpy as np

VOCAB_SIZE = 256  # bytes


def corpus_text(path):
    """Returns the corpus as one string."""
    if path:
        return Path(path).read_text(encoding="utf-8")
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def sources(task):
    """Returns the files the held-out split was cut from: a variant's process may not read them."""
    if task.get("corpus"):
        return [str(Path(task["corpus"]).resolve())]
    import importlib.util

    return list(importlib.util.find_spec("pydoc_data").submodule_search_locations)


def prepare(out_dir, task):
    """Writes train.bin, dev.bin, heldout.bin (uint8) and meta.json to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = np.frombuffer(corpus_text(task.get("corpus")).encode("utf-8"), dtype=np.uint8)
    fractions = task.get("split", [0.8, 0.1, 0.1])
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"task.split: expected three positive fractions summing to 1, got {fractions!r}")
    n_train = int(len(data) * fractions[0])
    n_dev = int(len(data) * fractions[1])
    parts = {"train": data[:n_train], "dev": data[n_train:n_train + n_dev],
             "heldout": data[n_train + n_dev:]}
    for name, part in parts.items():
        if len(part) < 2 * int(task.get("eval_seq_len", 128)):
            raise ValueError(f"task.corpus: the {name} split has only {len(part)} bytes")
        (out / f"{name}.bin").write_bytes(part.tobytes())
    meta = {"vocab_size": VOCAB_SIZE, **{f"{k}_tokens": int(len(v)) for k, v in parts.items()}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta
