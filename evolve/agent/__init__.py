"""The LLM operator, in the driver's threads: prompts, requests, the cascade of checks, replies and the notebook."""

from evolve import moved


def __getattr__(name):  # the old module evolve.agent, for pickles made before the move
    return moved.attribute(__name__, name)
