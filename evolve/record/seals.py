"""Mutable-surface policy and sealed-file hashes.

Pure checks: which files a child may differ from its parent in, and whether
the sealed files still hash to what they did when the search began.
"""

from __future__ import annotations

import glob
from pathlib import Path

from evolve.variant import content_hash


class SealedFileChanged(RuntimeError):
    """A sealed file no longer matches its hash; the message is one line."""


def sealed_paths(root: Path, patterns: list[str]) -> list[Path]:
    """Returns the files the sealed patterns match under `root`, sorted."""
    hits = {Path(p).resolve() for pat in patterns for p in glob.glob(str(root / pat))}
    return sorted(p for p in hits if p.is_file())


def hash_files(paths: list[Path]) -> dict[str, str]:
    """Returns absolute path -> SHA-256 of its bytes."""
    return {str(p): content_hash(Path(p).read_bytes()) for p in paths}


def check_sealed(expected: dict[str, str]) -> None:
    """Raises SealedFileChanged naming the first sealed file that changed or vanished."""
    for path, digest in sorted(expected.items()):
        p = Path(path)
        if not p.is_file():
            raise SealedFileChanged(f"sealed file missing: {path}")
        if content_hash(p.read_bytes()) != digest:
            raise SealedFileChanged(f"sealed file changed: {path}")


def surface_violations(parent: dict[str, bytes], child: dict[str, bytes],
                       mutable: list[str]) -> list[str]:
    """Returns the paths where the child differs from its parent outside `mutable`."""
    paths = sorted(set(parent) | set(child))
    return [p for p in paths if parent.get(p) != child.get(p) and p not in mutable]
