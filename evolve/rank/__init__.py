"""The forked rank: its entry points, its walls (sandbox, Landlock, seccomp, channel) and its training loops."""

from evolve import moved


def __getattr__(name):  # the old module evolve.rank, for pickles made before the move
    return moved.attribute(__name__, name)
