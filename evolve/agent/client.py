"""The LLM seam: chat completions from an OpenAI-compatible endpoint or a local model.

Two clients with one method, `complete(messages) -> Completion`:

- `ChatClient`: any OpenAI-compatible endpoint (vLLM, SGLang, Ollama,
  hosted APIs) through the `openai` package, whose own retry loop backs
  off exponentially on 408/409/429/5xx, time-outs and lost connections
  and honours Retry-After.
- `LocalClient`: a `transformers` causal LM loaded from a folder on disk.

The API key is read from the environment variable the spec names, when the
HTTP client is built, inside this process; it is never an attribute that
gets pickled, printed, logged or written.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass

# openai, transformers and torch are imported on first use: a search with a heuristic operator, or
# with only an endpoint, never loads the local model's stack.

MAX_REPLY_BYTES = 1_000_000  # a longer completion is refused before it is parsed
_BUILD_LOCK = threading.Lock()  # guards the lazy building of HTTP clients


_KEYS: dict[str, str] = {}  # environment-variable name -> key, in this process's memory only


def hold_keys(names) -> None:
    """Moves each named API key out of `os.environ` into this process's memory.

    Called before Ray or the zygote start, so that no process they start,
    and so no variant's code, inherits a key.
    """
    for name in names:
        if name and name in os.environ:
            _KEYS[name] = os.environ.pop(name)


def has_key(name: str) -> bool:
    return bool(_KEYS.get(name) or os.environ.get(name))


class LLMError(RuntimeError):
    """The endpoint failed after its retries; the message is one line."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model: str


def price(entry: dict, c: Completion) -> float:
    """Returns the cost of one completion at the entry's prices per million tokens."""
    return (c.prompt_tokens * entry["price_prompt"] + c.completion_tokens * entry["price_completion"]) / 1e6


class ChatClient:
    """A chat-completions client for one model at one OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "", temperature: float = 0.7,
                 max_tokens: int = 4096, timeout_s: float = 120.0, retries: int = 3):
        if not base_url:
            raise LLMError("operator.base_url: empty")
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.temperature, self.max_tokens = temperature, max_tokens
        self.timeout_s, self.retries = timeout_s, retries
        self._client = None

    def __getstate__(self):  # the HTTP client (which holds the key) is never pickled
        return {**self.__dict__, "_client": None}

    def __repr__(self) -> str:
        return f"ChatClient({self.base_url!r}, model={self.model!r})"

    def _openai(self):
        with _BUILD_LOCK:  # one client is shared by the threads that call `complete`
            if self._client is None:
                from openai import OpenAI

                key = (_KEYS.get(self.api_key_env) or os.environ.get(self.api_key_env, "")
                       if self.api_key_env else "")
                self._client = OpenAI(base_url=self.base_url, api_key=key or "unused",
                                      timeout=self.timeout_s, max_retries=self.retries)
            return self._client

    def close(self) -> None:
        with _BUILD_LOCK:
            if self._client is not None:
                self._client.close()
                self._client = None

    def complete(self, messages: list[dict]) -> Completion:
        """Returns the first choice's text and token counts; raises LLMError."""
        import openai
        from openai.types.chat import ChatCompletionMessage

        t0 = time.monotonic()
        tries = f"{self.retries + 1} tries"
        try:
            r = self._openai().chat.completions.create(
                model=self.model, messages=messages, temperature=self.temperature,
                max_tokens=self.max_tokens)
        except openai.APIStatusError as e:
            retried = e.status_code in (408, 409, 429) or e.status_code >= 500  # what openai retries
            raise LLMError(f"{self.base_url}: HTTP {e.status_code}" + (f" ({tries})" if retried else "")) from e
        except openai.APITimeoutError as e:
            raise LLMError(f"{self.base_url}: no reply within {self.timeout_s:g} s ({tries})") from e
        except openai.APIConnectionError as e:
            raise LLMError(f"{self.base_url}: cannot connect ({tries})") from e
        except (openai.OpenAIError, ValueError) as e:  # a body that is not the protocol
            raise LLMError(f"{self.base_url}: bad reply: {' '.join(str(e).split())[:200]}") from e
        # The openai package builds its objects without validating them, so a body that is
        # JSON but not the protocol arrives here in any shape: check each step.
        choices = getattr(r, "choices", None)
        message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
        if message is None:
            raise LLMError(f"{self.base_url}: reply has no choices")
        if not isinstance(message, ChatCompletionMessage):
            raise LLMError(f"{self.base_url}: bad reply: the first choice's message is "
                           f"{type(message).__name__}, not a message")
        text = getattr(message, "content", None)
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise LLMError(f"{self.base_url}: bad reply: the message content is "
                           f"{type(text).__name__}, not text")
        if len(text.encode()) > MAX_REPLY_BYTES:
            raise LLMError(f"{self.base_url}: reply of {len(text.encode()):,} bytes is over the "
                           f"limit of {MAX_REPLY_BYTES:,}")
        usage = getattr(r, "usage", None)
        model = getattr(r, "model", None)
        return Completion(text=text, prompt_tokens=self._count(usage, "prompt_tokens"),
                          completion_tokens=self._count(usage, "completion_tokens"),
                          latency_s=time.monotonic() - t0,
                          model=model if isinstance(model, str) and model else self.model)

    def _count(self, usage, name: str) -> int:
        value = getattr(usage, name, None)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e15:
            raise LLMError(f"{self.base_url}: bad reply: usage.{name} is "
                           f"{' '.join(repr(value).split())[:40]}")
        return int(value)


class LocalClient:
    """A `transformers` causal LM from a folder on disk, answering chat messages.

    The folder holds what `save_pretrained` writes for a model and its
    tokenizer. The tokenizer's chat template is used when it has one;
    otherwise the messages are laid out as `role: content` lines.
    """

    def __init__(self, path: str, temperature: float = 0.7, max_tokens: int = 4096, seed: int = 0):
        self.path, self.temperature, self.max_tokens, self.seed = path, temperature, max_tokens, seed
        self.model = os.path.basename(os.path.normpath(path))
        self._loaded = None
        self._calls = 0  # seeds each generation: the n-th reply is reproducible
        self._lock = threading.Lock()  # one generation at a time per loaded model

    def __getstate__(self):
        return {**self.__dict__, "_loaded": None, "_lock": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _load(self):
        if self._loaded is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if not os.path.isdir(self.path):  # else transformers takes it for a hub name and downloads
                raise LLMError(f"{self.path}: not a folder (a transformers model is loaded from disk)")
            try:
                tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True)
            except (OSError, ValueError) as e:
                raise LLMError(f"{self.path}: cannot load a transformers model: "
                               f"{' '.join(str(e).split())[:200]}") from e
            model.eval()
            self._loaded = (tok, model)
        return self._loaded

    def _prompt_ids(self, tok, messages: list[dict]):
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=False)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return tok(text, return_tensors="pt")["input_ids"]

    def complete(self, messages: list[dict]) -> Completion:
        import torch

        t0 = time.monotonic()
        with self._lock:
            tok, model = self._load()
            ids = self._prompt_ids(tok, messages)
            limit = getattr(model.config, "max_position_embeddings", None) or getattr(
                model.config, "n_positions", None)
            new = self.max_tokens
            if limit:
                ids = ids[:, -max(1, limit - 1):]  # keep the end of a prompt longer than the context
                new = max(1, min(new, limit - ids.shape[1]))
            self._calls += 1
            torch.manual_seed(self.seed * 1_000_003 + self._calls)
            sample = self.temperature > 0
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                     do_sample=sample, temperature=self.temperature if sample else None,
                                     top_p=None, top_k=None,
                                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                     else tok.eos_token_id)
        completion = out[0, ids.shape[1]:]
        text = tok.decode(completion, skip_special_tokens=True)
        return Completion(text=text, prompt_tokens=int(ids.shape[1]),
                          completion_tokens=int(completion.shape[0]),
                          latency_s=time.monotonic() - t0, model=self.model)


def make_client(entry: dict, timeout_s: float, retries: int, seed: int = 0):
    """Returns the client for one model entry (a mapping of config.MODEL_FIELDS)."""
    if entry["backend"] == "transformers":
        return LocalClient(entry["model"], entry["temperature"], entry["max_tokens"], seed)
    return ChatClient(entry["base_url"], entry["model"], entry["api_key_env"], entry["temperature"],
                      entry["max_tokens"], timeout_s, retries)


def pick(rng: random.Random, entries: list[dict]) -> int:
    """Returns the index of the model entry drawn by weight."""
    return rng.choices(range(len(entries)), weights=[e["weight"] for e in entries])[0]
