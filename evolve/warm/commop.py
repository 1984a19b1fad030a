"""DeepSpeed's CPU communication op: built once, loaded under a lock that dies with its holder.

torch builds and loads a JIT extension while holding a plain lock file in
its build folder. A process killed there (a driver or a rank killed by a
signal) leaves that file behind, and every later load waits on it forever:
a resumed search, or every trial of the next one, would hang. Every evolve
process that loads the op (the driver before the first trial, each node's
zygote before it forks children, which then inherit it) does so while
holding an `flock` on a file beside it, which the kernel releases when its
holder dies. Under that flock, torch's lock file can only be left over from
a dead process, so it is removed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

# DeepSpeed and torch are imported inside `load_cpu_comm_op`: the driver imports this module before it
# needs them.

OP_NAME = "deepspeed_shm_comm"


def load_cpu_comm_op() -> bool:
    """Builds (first time) or loads the op on the CPU accelerator; returns False elsewhere."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return False
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
    from torch.utils.cpp_extension import _get_build_directory

    build_dir = Path(_get_build_directory(OP_NAME, verbose=False))
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f".{OP_NAME}.evolve-lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if stale.exists():  # its holder died: a live one would hold the flock we hold
                stale.unlink()
            ShareMemCommBuilder().load(verbose=False)
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)
    return True


if __name__ == "__main__":  # setup.sh: build it once, so no trial pays the minute it takes
    print(f"{OP_NAME}: {'ready' if load_cpu_comm_op() else 'not needed (not the CPU accelerator)'}")
