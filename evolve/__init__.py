"""evolve: population search over training scaffolding.

Each subpackage is a process or a concern (docs/ARCHITECTURE.md draws them):
`search` and `agent` run in the driver, `trial` in Ray Tune's trial and the
slot relays, `warm` is the warm process per node, `rank` the forked rank and
its walls, `record` the run's durable record, `read` what reads a run back.
"""

from evolve import moved

moved.install()  # a run made before the package was re-housed names the old modules in its pickles
