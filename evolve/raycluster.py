"""Which Ray cluster a search runs on: join one, or start its own, and say which in one line.

In order:

1. `RAY_ADDRESS` names a cluster: the search joins it (on a cluster, and
   under `ray job submit`, which sets it).
2. A cluster that `ray start --head` left running on this machine (Ray
   records its address in `ray_current_cluster` under its temporary folder)
   and whose GCS process is alive: the search joins it. Every search on the
   machine then shares that cluster's CPUs through Ray's scheduler, and
   token authentication is taken as Ray takes it for a cluster it finds.
3. Otherwise the search starts a private local Ray on loopback, which ends
   with it. Other private instances already on this machine are counted in
   the line: each believes it owns every CPU, so the line says how to share
   them instead (`ray start --head`, and every search joins it).

The functions that decide and describe (`choose`, `cluster_line`) are pure.
"""

from __future__ import annotations

import logging
import os

JOIN_ENV, JOIN_LOCAL, START = "RAY_ADDRESS", "ray start", "local"


def choose(env_address: str | None, recorded: str | None, running: set[str]) -> tuple[str, str | None]:
    """Returns (how, address): join RAY_ADDRESS, join the live recorded `ray start` head, or start one (pure)."""
    if env_address:
        return JOIN_ENV, env_address
    if recorded and recorded in running:
        return JOIN_LOCAL, recorded
    return START, None


def cluster_line(how: str, address: str, resources: dict, nodes: int, others: int = 0) -> str:
    """The one line that says which cluster a search is on (pure)."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    size = f"{cpus:g} CPUs, {gpus:g} GPUs, {nodes} node{'s' if nodes != 1 else ''}"
    if how == JOIN_ENV:
        return f"ray: joined the cluster at {address} (RAY_ADDRESS): {size}"
    if how == JOIN_LOCAL:
        return (f"ray: joined the cluster `ray start` left running at {address}: {size}, "
                f"shared with every search that joins it")
    line = f"ray: started a local cluster at {address} for this search alone: {size}"
    if others:
        line += (f"; {others} other Ray instance{'s' if others != 1 else ''} on this machine use the same CPUs "
                 f"(start one with `ray start --head --num-cpus=N` and every search joins it)")
    return line


def _running() -> set[str]:
    """The GCS addresses of the Ray instances running on this machine (from the process table)."""
    from ray._private import services

    services.find_gcs_addresses.cache_clear()
    return set(services.find_gcs_addresses())


def join_or_start(env_vars: dict, num_cpus: int | None = None, log=print, logging_level: int = logging.INFO) -> str:
    """Connects this process to Ray as the module says; prints the cluster line and returns it.

    Raises ConnectionError from Ray when RAY_ADDRESS names no cluster.
    """
    import ray
    from ray._private import services

    running = _running()
    how, address = choose(os.environ.get("RAY_ADDRESS"), services.find_bootstrap_address(None), running)
    kwargs = {"runtime_env": {"env_vars": env_vars}, "include_dashboard": False,
              "log_to_driver": os.environ.get("EVOLVE_RAY_LOGS", "0") == "1", "logging_level": logging_level}
    if how == START:
        # "local": a new instance even if a stale ray_current_cluster names a dead one
        ray.init(address="local", num_cpus=num_cpus or None, **kwargs)
    else:  # RAY_ADDRESS, or address None: Ray finds the same head (and its token, if it uses one)
        ray.init(**kwargs)
    gcs = ray.get_runtime_context().gcs_address
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    line = cluster_line(how, gcs, ray.cluster_resources(), nodes, len(running - {gcs}) if how == START else 0)
    log(line)
    return line
