"""The command line's parsing: each command's options and `key=value` overrides in any order, and an
example under each command's --help.

argparse's intermixed parsing cannot cross a subparser, so the command is picked first and its own
parser reads the rest intermixed: `evolve run EXP --run-dir runs/x budget.trials=4` and
`evolve run --run-dir runs/x EXP budget.trials=4` mean the same. Pure: no evolve module is imported.
"""

from __future__ import annotations

import argparse

# Shown under each command's --help (an epilog); tests/test_cli.py checks that every command has one.
EXAMPLES = {
    "run": ["evolve run experiments/tiny_lm",
            "evolve run experiments/tiny_lm --run-dir runs/try budget.trials=4 budget.train_tokens=40960"],
    "resume": ["evolve resume runs/tiny_lm"],
    "status": ["evolve status runs/tiny_lm"],
    "show": ["evolve show runs/tiny_lm 5af0 --prompt", "evolve show runs/tiny_lm notebook --version 2"],
    "checkout": ["evolve checkout runs/tiny_lm 5af0 variant_5af0/"],
    "review": ["evolve review runs/tiny_lm"],
    "approve": ["evolve approve runs/tiny_lm 5af0 --note 'checked the diff by hand'"],
    "export-git": ["evolve export-git runs/tiny_lm lineage_repo/"],
    "report": ["evolve report runs/tiny_lm -o tiny_lm.html"],
    "init": ["evolve init my_lm --text corpus.txt     # a byte-level LM on your text",
             "evolve init my_exp --empty              # every hook documented, for you to fill in",
             "evolve init my_exp                      # asks on the terminal"],
    "check": ["evolve check experiments/tiny_lm", "evolve check my_lm budget.train_tokens=65536"],
}


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Returns each command's own parser, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def add_examples(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Puts each command's examples under its --help; returns `parser`."""
    for name, sub in commands(parser).items():
        lines = EXAMPLES.get(name)
        if lines:
            sub.epilog = "example" + ("s" if len(lines) > 1 else "") + ":\n" + "\n".join(f"  {x}" for x in lines)
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parses `argv` with the command's options and positionals in any order.

    A bad argument exits with status 2 and argparse's message, as `parse_args` does.
    """
    subs = commands(parser)
    if argv and argv[0] in subs:
        args = subs[argv[0]].parse_intermixed_args(argv[1:])
        for action in parser._actions:  # the command's name, where parse_args would have put it
            if isinstance(action, argparse._SubParsersAction) and action.dest is not argparse.SUPPRESS:
                setattr(args, action.dest, argv[0])
        return args
    return parser.parse_args(argv)  # --help, no command, an unknown one: argparse's own answer
