import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray stays on 127.0.0.1
# the test functions that zygotes started in tests may run, besides evolve's own entry points
os.environ.setdefault("EVOLVE_ZYGOTE_ENTRY_POINTS", ",".join(
    f"tests.zygote_targets:{f}" for f in ("identify", "poison", "is_poisoned", "fail", "die", "sleep",
                                           "spawn_and_sleep", "walls")))

ROOT = Path(__file__).resolve().parents[1]
TINY_LM = ROOT / "experiments" / "tiny_lm"


@pytest.fixture
def experiment(tmp_path):
    """A private copy of experiments/tiny_lm that a test may edit."""
    dest = tmp_path / "tiny_lm"
    shutil.copytree(TINY_LM, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


N_POSITIONS = 128


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A randomly initialised GPT-2 with a word-level tokenizer, saved as save_pretrained writes it."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    lines = ["system: You edit training code.", "user: Propose one change to the learning rate schedule.",
             "assistant: Use a cosine schedule with warm-up and a lower peak learning rate.",
             "the model trains on tokens and the loss goes down"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(lines, trainers.WordLevelTrainer(special_tokens=["<|endoftext|>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=N_POSITIONS, vocab_size=len(fast),
                        bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id,
                        pad_token_id=fast.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def small_run(tmp_path):
    """A run folder of six variants with results, no search behind it:

    seed 3.0 -> a 2.8 (perturb) -> c 2.6 (llm, 900 tokens) and d failed (llm);
    seed -> b 3.1 (perturb); a + b -> e 2.7 (crossover)."""
    from evolve.store import Store
    from evolve.variant import Variant

    root = tmp_path / "run"
    store = Store(root)
    (root / "spec.yaml").write_text("objective: {metric: heldout_loss, mode: min}\ntrial: {workers: 2}\n")
    made = {}

    def add(name, parents, op, fitness, seconds, tokens=0):
        v = Variant(files=store.put_files({"config.yaml": f"name: {name}\n".encode()}),
                    parents=tuple(made[p].id for p in parents), operator=op,
                    record={"kind": op, "rationale": f"make {name} <fast> & safe", "prompt_tokens": tokens, "completion_tokens": 0})
        store.put_variant(v)
        store.append_result({"variant_id": v.id, "parent_ids": list(v.parents), "operator": op, "record": v.record,
                             "status": "completed" if fitness else "failed", "fitness": fitness,
                             "metrics": {}, "curve": [[1000, 4.0, 3.9], [2000, 3.5, fitness or 9.0]],
                             "trial_seconds": seconds})
        made[name] = v

    add("seed", [], "seed", 3.0, 10.0)
    add("a", ["seed"], "perturb", 2.8, 12.0)
    add("b", ["seed"], "perturb", 3.1, 8.0)
    add("c", ["a"], "llm", 2.6, 30.0, 900)
    add("d", ["a"], "llm", None, 1.0, 500)
    add("e", ["a", "b"], "crossover", 2.7, 11.0)
    return root, {k: v.id for k, v in made.items()}


def wait_for_port(port: int, proc, log, wait_s: float = 60.0) -> None:
    """Waits until a server we started listens on 127.0.0.1:`port`; fails with its log if it exits or never does."""
    import socket
    import time

    deadline = time.time() + wait_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server did not start on port {port}: {Path(log).read_text()[-2000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """An S3-compatible server (moto's server mode) on 127.0.0.1 with one bucket, "runs".

    Sets the environment pyarrow reads (endpoint, fake keys, region) for
    the whole session's processes; yields the endpoint URL.
    """
    import socket
    import subprocess
    import sys

    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("s3") / "moto.log"
    log = open(log_path, "wb")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        wait_for_port(port, server, log_path)
        pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir("runs")
        yield endpoint
    finally:
        server.kill()
        server.wait()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
