"""The LLM seam: any OpenAI-compatible chat endpoint through the `openai` client.

The API key is read from the environment variable the spec names, at call
time; it is never stored on the object that gets pickled, logged or written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


class LLMError(RuntimeError):
    """The endpoint failed after its retries; the message is one line."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model: str


class ChatClient:
    """A chat-completions client with retries and back-off on 429, 5xx and time-outs."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "", temperature: float = 0.7,
                 max_tokens: int = 2048, timeout_s: float = 120.0, retries: int = 3):
        if not base_url:
            raise ValueError("operator.base_url: empty")
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.temperature, self.max_tokens = temperature, max_tokens
        self.timeout_s, self.retries = timeout_s, retries
        self._client = None

    def __getstate__(self):  # the HTTP client does not pickle; it is rebuilt on use
        return {**self.__dict__, "_client": None}

    def _openai(self):
        if self._client is None:
            from openai import OpenAI

            key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
            # openai's own retry loop backs off exponentially on 408/409/429/5xx
            # and connection errors, honouring Retry-After.
            self._client = OpenAI(base_url=self.base_url, api_key=key or "not-needed",
                                  timeout=self.timeout_s, max_retries=self.retries)
        return self._client

    def complete(self, messages: list[dict]) -> Completion:
        """Returns the first choice's text and token counts; raises LLMError."""
        import openai

        t0 = time.monotonic()
        try:
            r = self._openai().chat.completions.create(
                model=self.model, messages=messages, temperature=self.temperature,
                max_tokens=self.max_tokens)
        except openai.APIStatusError as e:
            raise LLMError(f"{self.base_url}: HTTP {e.status_code} after {self.retries} retries") from e
        except openai.APITimeoutError as e:
            raise LLMError(f"{self.base_url}: timed out after {self.timeout_s:g} s "
                           f"({self.retries} retries)") from e
        except openai.APIConnectionError as e:
            raise LLMError(f"{self.base_url}: cannot connect ({self.retries} retries)") from e
        except openai.OpenAIError as e:
            raise LLMError(f"{self.base_url}: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from e
        if not r.choices:
            raise LLMError(f"{self.base_url}: reply has no choices")
        text = r.choices[0].message.content or ""
        usage = r.usage
        return Completion(text=text, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                          latency_s=time.monotonic() - t0, model=r.model or self.model)
