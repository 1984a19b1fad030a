"""The Tune trial process and the slot relays: a trial on a warm slot, its relay and its evaluation."""

from evolve import moved


def __getattr__(name):  # the old module evolve.trial, for pickles made before the move
    return moved.attribute(__name__, name)
