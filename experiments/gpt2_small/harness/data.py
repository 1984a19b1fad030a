"""Sealed: builds gpt2_small's token splits once per search, from a corpus the user names.

task.corpus is either
- a nanoGPT-style token file (`*.bin`: uint16 GPT-2 token ids, as nanoGPT's
  `data/openwebtext/prepare.py` writes them; vocabulary task.vocab_size), or
- a UTF-8 text file, whose bytes are the tokens (vocabulary 256): nothing
  to download, no tokenizer to trust.

The corpus is cut into contiguous blocks (train, dev, held-out), so no
held-out passage is also trained on. The splits are written as uint16 token
files with `dtype` in meta.json, which the harness reads.
"""

import json
from pathlib import Path

import numpy as np

DTYPE = "uint16"


def sources(task):
    """Returns the files the held-out split was cut from: a variant's process may not read them."""
    if not task.get("corpus"):
        raise ValueError("task.corpus: name a text file or a uint16 token file (corpus=PATH)")
    return [str(Path(task["corpus"]).resolve())]


def tokens(task):
    """Returns the corpus as a 1-D uint16 array and its vocabulary size."""
    path = Path(sources(task)[0])
    if not path.is_file():
        raise ValueError(f"task.corpus: no such file {str(path)!r}")
    if path.suffix == ".bin":
        data = np.memmap(path, dtype=np.uint16, mode="r")
        vocab = int(task.get("vocab_size", 50304))
        if len(data) and int(data.max()) >= vocab:
            raise ValueError(f"task.corpus: token id {int(data.max())} is not below task.vocab_size {vocab}")
        return data, vocab
    return np.frombuffer(path.read_text(encoding="utf-8").encode("utf-8"), dtype=np.uint8).astype(np.uint16), 256


def prepare(out_dir, task):
    """Writes train.bin, dev.bin, heldout.bin (uint16 token ids) and meta.json to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, vocab = tokens(task)
    fractions = task.get("split", [0.98, 0.01, 0.01])
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"task.split: expected three positive fractions summing to 1, got {fractions!r}")
    n_train, n_dev = int(len(data) * fractions[0]), int(len(data) * fractions[1])
    parts = {"train": data[:n_train], "dev": data[n_train:n_train + n_dev], "heldout": data[n_train + n_dev:]}
    for name, part in parts.items():
        if len(part) < 2 * int(task.get("eval_seq_len", 1024)):
            raise ValueError(f"task.corpus: the {name} split has only {len(part)} tokens")
        np.asarray(part, dtype=np.uint16).tofile(out / f"{name}.bin")
    meta = {"vocab_size": vocab, "dtype": DTYPE, **{f"{k}_tokens": int(len(v)) for k, v in parts.items()}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta
