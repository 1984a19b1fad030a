import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray stays on 127.0.0.1

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
