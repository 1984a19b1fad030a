"""Where each module of the flat layout lives now, so that a run made before the move still loads.

A run folder keeps pickles (Ray Tune's state and the searcher's) that name
classes by their module, for example `evolve.config.Spec`. The finder below
answers an old dotted name with the module's new home, so those pickles load
and `resume` goes on; new pickles name the new modules. Three old modules
(`evolve.agent`, `evolve.trial`, `evolve.rank`) now share their name with a
package: their packages resolve the old module's attributes through
`attribute`.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

OLD = {
    "evolve.runner": "evolve.driver",
    "evolve.config": "evolve.spec",
    "evolve.searcher": "evolve.search.searcher",
    "evolve.population": "evolve.search.selection",
    "evolve.operators.heuristic": "evolve.search.heuristic",
    "evolve.yamledit": "evolve.search.yamledit",
    "evolve.confirm": "evolve.search.confirm",
    "evolve.stats": "evolve.search.stats",
    "evolve.baselines": "evolve.search.baselines",
    "evolve.operators.llm": "evolve.agent.operator",
    "evolve.agent": "evolve.agent.writer",
    "evolve.llm": "evolve.agent.client",
    "evolve.prompts": "evolve.agent.prompts",
    "evolve.replies": "evolve.agent.replies",
    "evolve.outbox": "evolve.agent.outbox",
    "evolve.cascade": "evolve.agent.cascade",
    "evolve.edits": "evolve.agent.edits",
    "evolve.audit": "evolve.agent.audit",
    "evolve.notebook": "evolve.agent.notebook",
    "evolve.trial": "evolve.trial.train",
    "evolve.slots": "evolve.trial.slots",
    "evolve.fasttrain": "evolve.trial.relay",
    "evolve.evaluation": "evolve.trial.evaluation",
    "evolve.zygote": "evolve.warm.zygote",
    "evolve.ops": "evolve.warm.commop",
    "evolve.rank": "evolve.rank.entry",
    "evolve.sandbox": "evolve.rank.sandbox",
    "evolve.landlock": "evolve.rank.landlock",
    "evolve.syscalls": "evolve.rank.syscalls",
    "evolve.channel": "evolve.rank.channel",
    "evolve.harness": "evolve.rank.lm",
    "evolve.rl": "evolve.rank.rl",
    "evolve.performance": "evolve.rank.performance",
    "evolve.mfu": "evolve.rank.mfu",
    "evolve.store": "evolve.record.store",
    "evolve.storage": "evolve.record.mirror",
    "evolve.governance": "evolve.record.seals",
    "evolve.analysis": "evolve.read.population",
    "evolve.lineage": "evolve.read.lineage",
    "evolve.status": "evolve.read.status",
    "evolve.report": "evolve.read.report",
    "evolve.plots": "evolve.read.plots",
    "evolve.gitexport": "evolve.read.gitexport",
    "evolve.operators": "evolve.agent",
}
SHADOWED = ("evolve.agent", "evolve.trial", "evolve.rank")  # old modules that are packages now


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)  # the module itself: one object under both names

    def exec_module(self, module):
        pass


class MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in OLD or name in SHADOWED:
            return None
        new = OLD[name]
        package = name == "evolve.operators"
        return importlib.machinery.ModuleSpec(name, _Alias(new), is_package=package)


def attribute(package: str, name: str):
    """The old module `package`'s attribute `name`, from its new home; AttributeError if it had none."""
    if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is None:  # not a submodule
        module = importlib.import_module(OLD[package])
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
