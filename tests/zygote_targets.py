"""Functions the zygote tests run in forked children."""

import os
import sys
import time


def identify(report, n):
    torch_loaded = "torch" in sys.modules
    table = getattr(sys.modules.get("transformers.conversion_mapping"), "_checkpoint_conversion_mapping_cache", None)
    for i in range(n):
        report({"i": i})
    return {"pid": os.getpid(), "parent": os.getppid(), "torch_loaded_before": torch_loaded,
            "weight_table_built": table is not None}


def poison(report):
    import torch

    torch.nn.functional.cross_entropy = lambda *a, **k: 0.0  # a variant patching a shared module
    os.environ["EVOLVE_POISON"] = "1"
    return {"poisoned": True}


def is_poisoned(report):
    import torch

    patched = torch.nn.functional.cross_entropy(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)) == 0.0
    return {"poisoned": bool(patched) or "EVOLVE_POISON" in os.environ}


def fail(report, x):
    raise ValueError(f"bad value {x}")


def die(report):
    os._exit(9)


def sleep(report, s):
    time.sleep(s)


def spawn_and_sleep(report, s, pidfile):
    import subprocess
    import sys

    grandchild = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({s})"])
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()} {grandchild.pid}")
    time.sleep(s)


def walls(report):
    """Raises the rank's last walls as the harness does; returns how long the seccomp step took."""
    from evolve.rank import sandbox

    t0 = time.perf_counter()
    sandbox.confine()
    return {"confine_s": time.perf_counter() - t0, "entered": sandbox.entered()}
