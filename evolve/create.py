"""`evolve init DIR`: writes a new experiment folder.

Two kinds: a byte-level language model on a text file the user names (`--text FILE`: tiny_lm's sealed
harness and seed scaffold, with `task.corpus` pointing at the file), or an empty experiment whose
every hook says what it must return (`--empty`), for a task of one's own. On a terminal, with neither
flag, it asks. Every refusal is one line (`CreateError`); nothing is written until the inputs pass.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import yaml

from evolve.spec import SpecError

TEMPLATE = Path(__file__).resolve().parent.parent / "experiments" / "tiny_lm"
EXPERIMENT_FILES = ("experiment.yaml", "harness/data.py", "harness/evaluate.py",
                    "scaffold/recipe.py", "scaffold/config.yaml", "scaffold/guidelines.md")


class CreateError(SpecError):
    """`evolve init` refused its input; the message is one line (the CLI's exit status 2)."""


def check_target(target: Path) -> None:
    """Refuses a folder that exists and is not empty (or a file)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CreateError(f"init: {str(target)!r} exists and is not an empty folder")


def min_text_bytes(task: dict) -> int:
    """Returns the fewest bytes of text the tiny_lm harness can split (pure): every split, the smallest
    included, must hold two evaluation windows (`harness/data.py` refuses less)."""
    fractions = task.get("split") or [0.8, 0.1, 0.1]
    return math.ceil(2 * int(task.get("eval_seq_len") or 128) / min(fractions)) + 2


def check_text(path: Path, task: dict) -> int:
    """Returns the byte count of a usable corpus; refuses a missing, unreadable, non-UTF-8 or too small file."""
    if not path.is_file():
        raise CreateError(f"--text: {str(path)!r} is not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CreateError(f"--text: {str(path)!r} cannot be read ({e.strerror})") from None
    need = min_text_bytes(task)
    if len(data) < need:
        raise CreateError(f"--text: {str(path)!r} holds {len(data):,} bytes; an LM experiment needs at least "
                          f"{need:,} (each of the train, dev and held-out splits holds two evaluation windows)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CreateError(f"--text: {str(path)!r} is not UTF-8 text (byte {e.start:,} is not)") from None
    return len(data)


def text_spec(template_yaml: str, corpus: Path, folder: str) -> str:
    """Returns tiny_lm's experiment.yaml with `task.corpus` pointing at `corpus` (pure; comments kept)."""
    header = (f"# {Path(folder).name}: evolve the recipe that trains a small byte-level GPT-2 on {corpus.name}.\n"
              f"# Made by `evolve init --text` from experiments/tiny_lm. Check it, then run it:\n"
              f"#         evolve check {folder}\n#         evolve run {folder} budget.trials=4\n")
    body = "\n".join(line for line in template_yaml.splitlines() if not line.startswith("#")) + "\n"
    quoted, label = json.dumps(str(corpus)), json.dumps(corpus.name)  # a JSON string is a YAML one, on one line
    body, n = re.subn(r"^  corpus: null\b.*$",
                      lambda _: f"  corpus: {quoted}   # the UTF-8 text file the splits are cut from",
                      body, count=1, flags=re.M)
    body, m = re.subn(r"^  corpus_name: .*$",
                      lambda _: f"  corpus_name: {label}   # how the agent's prompts name the corpus",
                      body, count=1, flags=re.M)
    if n != 1 or m != 1:
        raise CreateError("init: the tiny_lm template's experiment.yaml has no task.corpus or task.corpus_name line")
    return header + body


def write_text_experiment(target: Path, text: Path, template: Path = TEMPLATE) -> list[str]:
    """Writes a byte-level LM experiment on `text` into `target`; returns the files written."""
    check_target(target)
    missing = [f for f in EXPERIMENT_FILES if not (template / f).is_file()]
    if missing:
        raise CreateError(f"init: the tiny_lm template is incomplete or not beside the package "
                          f"({template / missing[0]} is missing); install evolve from a clone (pip install -e .)")
    template_yaml = (template / "experiment.yaml").read_text()
    task = (yaml.safe_load(template_yaml) or {}).get("task") or {}
    check_text(text, task)
    spec_text = text_spec(template_yaml, text.resolve(), str(target))
    files = {rel: (template / rel).read_bytes() for rel in EXPERIMENT_FILES if rel != "experiment.yaml"}
    files["experiment.yaml"] = spec_text.encode()
    return _write(target, files)


def write_empty_experiment(target: Path) -> list[str]:
    """Writes an experiment whose every hook documents what it must return; returns the files written."""
    check_target(target)
    return _write(target, {rel: text.encode() for rel, text in EMPTY.items()})


def _write(target: Path, files: dict[str, bytes]) -> list[str]:
    """Writes `files` into a temporary sibling, then renames it into place: no half-written folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.init-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    for rel, data in files.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if target.exists():
        target.rmdir()  # checked empty above
    staging.rename(target)
    return sorted(files)


def ask_and_write(target: Path, ask=input, say=print) -> list[str]:
    """Asks on the terminal which kind of experiment to write, then writes it."""
    say(f"evolve init {target}: which experiment?")
    say("  1  a byte-level language model on a text file of yours (tiny_lm's recipe and harness)")
    say("  2  an empty experiment: every hook documented, for you to fill in")
    choice = ask("choose 1 or 2 [1]: ").strip() or "1"
    if choice == "2":
        return write_empty_experiment(target)
    if choice != "1":
        raise CreateError(f"init: no choice {choice!r} (1 or 2)")
    text = ask("the UTF-8 text file to learn: ").strip()
    if not text:
        raise CreateError("init: no text file given")
    return write_text_experiment(target, Path(text).expanduser())


EMPTY = {
    "experiment.yaml": """\
# An experiment of your own. Fill in every hook that raises NotImplementedError (each says what it
# must return), then: evolve check THIS_FOLDER, and evolve run THIS_FOLDER.
scaffold: scaffold                    # the seed variant: recipe.py + config.yaml + guidelines.md
mutable: [scaffold/recipe.py, scaffold/config.yaml, scaffold/guidelines.md]   # what a mutation may change
sealed: [harness/data.py, harness/evaluate.py]   # no variant may read or change these (nor the held-out split)
objective: {metric: heldout_loss, mode: min}     # a key of what harness/evaluate.py returns
budget:
  trials: 8               # variants trained, the seed included
  concurrent: 2           # trials at once
  train_tokens: 200_000   # tokens each trial trains on; the harness stops every variant there
operator:
  kind: heuristic
  heuristic:
    file: scaffold/config.yaml
    bounds:                 # the numbers of config.yaml the heuristic operator may move, and their ranges
      lr: [1.0e-5, 0.1]
    log_scale: [lr]
trial: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0, report_every: 20}
task:                       # handed to harness/data.py, harness/evaluate.py and the harness's limits
  param_cap: 1_000_000      # the most parameters a variant's model may have
  eval_seq_len: 128         # context of the sealed evaluation
  dev_tokens: 8192          # tokens of dev data behind each learning-curve point
""",
    "harness/data.py": '''\
"""Sealed: writes the data splits once per search. No variant may read or change this file."""


def prepare(out_dir, task):
    """Writes the splits into the folder `out_dir` (create it) and returns the meta dict.

    Must write, as flat token arrays (numpy `tofile`, uint8 unless meta says otherwise):
      train.bin    what variants train on
      dev.bin      what the learning curve is measured on
      heldout.bin  what only the sealed evaluation reads
      meta.json    {"vocab_size": int, "dtype": "uint8" or "uint16" (optional)}
    `task` is the spec's task section (a dict).
    """
    raise NotImplementedError("harness/data.py prepare: write train.bin, dev.bin, heldout.bin and meta.json "
                              "to out_dir, and return the meta dict")


def sources(task):
    """Returns the files the held-out split was cut from: no variant's process may read them."""
    return []
''',
    "harness/evaluate.py": '''\
"""Sealed: the fitness of a trained model. Runs on the saved weights, in a process that never
imported a variant. No variant may read or change this file."""


def evaluate(model, heldout_path, task):
    """Returns {metric name: float}, the objective's metric among them.

    `model` is a transformers GPT2LMHeadModel in eval mode (float32); `heldout_path` the held-out
    split that harness/data.py wrote; `task` the spec's task section.
    """
    raise NotImplementedError("harness/evaluate.py evaluate: return a dict of float metrics, "
                              "heldout_loss among them")
''',
    "scaffold/recipe.py": '''\
"""The seed training recipe: the hooks the harness calls. A mutation may change any of it.

The harness builds a GPT-2 from `model_config`, wraps it with DeepSpeed using `deepspeed_config`,
`optimizer` and `lr_multiplier`, feeds it the batches `batches` yields, trains on `loss` until the
token budget is spent, and saves the weights for the sealed evaluation. `cfg` is config.yaml, read.
"""


def model_config(cfg):
    """Returns GPT2Config keyword arguments (n_layer, n_head, n_embd, ...); vocab and context are the harness's."""
    raise NotImplementedError("model_config: return a dict of GPT2Config keyword arguments, "
                              "e.g. {'n_layer': 2, 'n_head': 4, 'n_embd': 64}")


def optimizer(model, cfg):
    """Returns a torch.optim.Optimizer over model.parameters()."""
    raise NotImplementedError("optimizer: return a torch.optim.Optimizer, e.g. torch.optim.AdamW(model.parameters(), lr=cfg['lr'])")


def lr_multiplier(cfg, total_steps):
    """Returns a function of the optimizer step (0 to total_steps - 1) giving the factor on the peak lr."""
    raise NotImplementedError("lr_multiplier: return a function step -> factor on the peak lr, e.g. lambda step: 1.0")


def deepspeed_config(cfg):
    """Returns the DeepSpeed knobs: zero_stage, gradient_accumulation_steps, gradient_clipping."""
    raise NotImplementedError("deepspeed_config: return a dict with zero_stage, gradient_accumulation_steps "
                              "and gradient_clipping")


def batches(data, cfg, generator):
    """Yields (inputs, targets) int64 tensors of shape (cfg['batch_size'], cfg['seq_len']) forever.

    `data` is this worker's shard of train.bin as a 1-D tensor; draw randomness from `generator`.
    """
    raise NotImplementedError("batches: yield (inputs, targets) int64 tensors of shape (batch_size, seq_len) forever")


def loss(logits, targets, cfg):
    """Returns the scalar training loss of logits (batch, seq, vocab) against targets (batch, seq)."""
    raise NotImplementedError("loss: return a scalar tensor, e.g. the cross-entropy of logits and targets")
''',
    "scaffold/config.yaml": """\
# The seed recipe's numbers. The harness reads seq_len and batch_size; the rest is the recipe's.
seq_len: 64           # training context in tokens
batch_size: 16        # sequences per micro-batch per worker
lr: 1.0e-3            # peak learning rate
""",
    "scaffold/guidelines.md": """\
# Guidelines for changing this recipe

- Say what the goal is (the objective's metric, after a fixed number of training tokens).
- Say what matters most at this scale, and what a mutation must keep (the parameter cap).
""",
}
