"""A variant: one version of the scaffold, named by the hash of its files."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field


def content_hash(data: bytes) -> str:
    """Returns the hex SHA-256 of `data`: the key of a blob in the store."""
    return hashlib.sha256(data).hexdigest()


def variant_id(files: dict[str, str]) -> str:
    """Returns the id of a variant whose files map path -> content hash.

    Two variants with the same files get the same id, so the id doubles as the
    duplicate check.
    """
    canon = json.dumps(sorted(files.items()), separators=(",", ":")).encode()
    return hashlib.sha256(canon).hexdigest()[:12]


@dataclass(frozen=True)
class Variant:
    files: dict  # path inside the scaffold -> content hash
    parents: tuple = ()  # ids of the parent variants; empty for the seed
    operator: str = "seed"  # what made it: "seed", "perturb", "crossover", ...
    record: dict = field(default_factory=dict)  # what the operator did, and why
    island: int = 0  # the sub-population it belongs to
    created_at: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return variant_id(self.files)

    def to_json(self) -> str:
        d = asdict(self)
        d["id"] = self.id
        d["parents"] = list(self.parents)
        return json.dumps(d, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Variant":
        d = json.loads(text)
        d.pop("id", None)
        d["parents"] = tuple(d["parents"])
        return cls(**d)
