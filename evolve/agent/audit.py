"""The audit table: every prompt and reply the agent exchanged, beside the population.

    audit/<seq>-<proposal id>.parquet   one file per proposal, one row per LLM call

Each row ties a call to the proposal it served, the variant that proposal
produced (`variant_id`) or the stage and reason it was rejected at, and its
tokens, latency and price. The API key is never in it: the messages are
the prompt, and the key lives only in the HTTP client.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from evolve.record.store import atomic_write

AUDIT_SCHEMA = pa.schema([
    ("proposal_id", pa.string()),
    ("purpose", pa.string()),  # "child", "merge" or "notebook"
    ("attempt", pa.int32()),  # 0 first call, 1.. repair rounds
    ("model", pa.string()),
    ("parent_id", pa.string()),
    ("variant_id", pa.string()),  # the child it produced (accepted proposals)
    ("outcome", pa.string()),  # "accepted" or "rejected" (of the whole proposal)
    ("stage", pa.string()),  # the stage that rejected this call's reply, if any
    ("reason", pa.string()),
    ("rationale", pa.string()),
    ("messages", pa.string()),  # JSON: the conversation sent
    ("reply", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("latency_s", pa.float64()),
    ("price", pa.float64()),
    ("cached", pa.bool_()),  # the reply was one already paid for (see evolve.agent.replies): no tokens, no price
    ("prompt_hash", pa.string()),
    ("notebook_version", pa.int32()),
    ("created_at", pa.float64()),  # the request was made
    ("finished_at", pa.float64()),  # the outcome was absorbed
])


def append(run_dir: str | Path, rows: list[dict]) -> Path | None:
    """Writes one proposal's calls as one Parquet file, atomically."""
    if not rows:
        return None
    full = []
    for row in rows:
        r = {name: row.get(name) for name in AUDIT_SCHEMA.names}
        if not isinstance(r["messages"], (str, type(None))):
            r["messages"] = json.dumps(r["messages"])
        full.append(r)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(full, schema=AUDIT_SCHEMA), sink)
    path = Path(run_dir) / "audit" / f"{time.time_ns():020d}-{rows[0]['proposal_id']}.parquet"
    atomic_write(path, sink.getvalue().to_pybytes())
    return path


def read(run_dir: str | Path) -> pa.Table:
    """Returns every audit row, oldest first."""
    parts = sorted((Path(run_dir) / "audit").glob("*.parquet"))
    if not parts:
        return AUDIT_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=AUDIT_SCHEMA) for p in parts])
