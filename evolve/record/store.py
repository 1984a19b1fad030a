"""The run's durable record: content-addressed files and the population table.

Layout of a run directory:

    objects/ab/cdef...        every file version, named by its SHA-256
    variants/<id>.json        a variant's manifest (files, parents, operator record)
    population/<seq>-<id>.parquet   one result row per finished trial, append-only
    population/compacted.parquet    the rows of older parts, merged (`Store.compact`)

Every write goes to a temporary file first and is renamed into place, so a
reader never sees half a file and a crash never leaves one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from evolve.record import mirror
from evolve.variant import Variant, content_hash

# One row per finished trial. Nested data (operator record, learning curve,
# files) is JSON text so the schema never changes with a recipe's contents.
RESULT_SCHEMA = pa.schema([
    ("variant_id", pa.string()),
    ("parent_ids", pa.list_(pa.string())),
    ("operator", pa.string()),
    ("record", pa.string()),  # JSON: what the operator changed
    ("island", pa.int32()),
    ("status", pa.string()),  # "completed" or "failed"
    ("failure_reason", pa.string()),
    ("fitness", pa.float64()),  # the objective's metric from the sealed evaluation
    ("metrics", pa.string()),  # JSON: every metric of the sealed evaluation
    ("curve", pa.string()),  # JSON: [[tokens, train_loss, dev_loss, step, lr], ...] (older rows: 3 columns)
    ("final_train_loss", pa.float64()),
    ("final_dev_loss", pa.float64()),
    ("train_seconds", pa.float64()),  # sum of step times (no dev-loss points, no reports)
    ("trial_seconds", pa.float64()),  # trial start to result recorded
    ("tokens_trained", pa.int64()),
    ("setup_seconds", pa.float64()),  # in the training process: recipe, model, DeepSpeed
    ("eval_seconds", pa.float64()),  # the sealed evaluation
    ("trial_id", pa.string()),
    ("created_at", pa.float64()),  # proposed
    ("started_at", pa.float64()),  # the trial's process began this variant
    ("first_step_at", pa.float64()),  # first optimizer step began
    ("last_step_at", pa.float64()),  # last optimizer step ended
    ("finished_at", pa.float64()),  # result recorded
    ("tokens_per_s", pa.float64()),  # the training loop's throughput, all ranks together
    ("mfu", pa.float64()),  # model FLOPs utilisation against the device's peak (null on a CPU)
    ("gpu_hours", pa.float64()),  # the trial's wall time times the GPUs its ranks held
    ("inherited_from", pa.string()),  # the parent whose final weights the trial continued from (operator.inherit)
    ("tokens_inherited", pa.int64()),  # tokens those weights held; tokens_trained counts only its own
    ("n_params", pa.int64()),  # the model's parameters, as the harness counted them (null in older rows)
    ("optimizer_steps", pa.int64()),  # the optimizer steps the harness planned for the budget (null in older rows)
])


def atomic_write(path: Path, data: bytes, durable: bool = True, upload: bool = True) -> None:
    """Writes `data` to `path` through a temporary file and a rename.

    `durable` flushes the file to disk before the rename (a record); files
    that can be made again from the store (a materialised variant) skip it.
    When the run folder is mirrored to cloud storage (`evolve.record.mirror`), the
    file is uploaded before this returns (`upload=False`: it came from there).
    """
    mirror.write_local(path, data, durable)
    if upload:
        mirror.written(path)


def parsed(row: dict) -> dict:
    """Returns a result row with its JSON columns (record, metrics, curve) decoded."""
    for key in ("record", "metrics", "curve"):
        if isinstance(row[key], str):
            row[key] = json.loads(row[key])
    return row


COMPACTED = "compacted.parquet"
COMPACT_AT = 512  # loose result parts that trigger a merge into compacted.parquet


class Store:
    """Content-addressed file store plus the append-only population table."""

    def __init__(self, run_dir: str | os.PathLike):
        self.root = Path(run_dir)
        self.objects = self.root / "objects"
        self.variants = self.root / "variants"
        self.population = self.root / "population"
        for d in (self.objects, self.variants, self.population):
            d.mkdir(parents=True, exist_ok=True)

    def sweep_temporaries(self) -> list[str]:
        """Removes the temporary files of writes a killed process never finished; returns their names.

        Only for a run no process is writing to (`evolve resume`, before it starts).
        """
        gone = []
        for tmp in sorted(self.root.glob("**/.*.tmp")):
            if tmp.is_file() and tmp.relative_to(self.root).parts[0] not in ("tune", "work", "trials"):
                tmp.unlink()
                gone.append(tmp.relative_to(self.root).as_posix())
        return gone

    # -- files ---------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        key = content_hash(data)
        path = self.objects / key[:2] / key[2:]
        if not path.exists():
            atomic_write(path, data)
        return key

    def get_blob(self, key: str) -> bytes:
        path = self.objects / key[:2] / key[2:]
        if not path.is_file():
            raise FileNotFoundError(f"store: blob {key} missing from {self.objects}")
        return path.read_bytes()

    def put_files(self, files: dict[str, bytes]) -> dict[str, str]:
        """Stores every file; returns path -> content hash."""
        return {rel: self.put_blob(data) for rel, data in sorted(files.items())}

    def read_files(self, variant: Variant) -> dict[str, bytes]:
        return {rel: self.get_blob(key) for rel, key in variant.files.items()}

    def materialize(self, variant: Variant, dest: str | os.PathLike) -> Path:
        """Writes the variant's files under `dest`; returns `dest`."""
        dest = Path(dest)
        for rel, data in self.read_files(variant).items():
            target = dest / rel
            if target.is_file() and target.read_bytes() == data:
                continue
            atomic_write(target, data, durable=False)  # made again from objects/ if lost
        return dest

    # -- variants ------------------------------------------------------------
    def put_variant(self, variant: Variant) -> str:
        path = self.variants / f"{variant.id}.json"
        if not path.exists():
            atomic_write(path, variant.to_json().encode())
        return variant.id

    def get_variant(self, vid: str) -> Variant:
        path = self.variants / f"{vid}.json"
        if not path.is_file():
            raise KeyError(f"no variant {vid!r} in {self.root}")
        return Variant.from_json(path.read_text())

    def variant_ids(self) -> list[str]:
        return sorted(p.stem for p in self.variants.glob("*.json"))

    def resolve(self, prefix: str) -> str:
        """Returns the one variant id that starts with `prefix`."""
        hits = [v for v in self.variant_ids() if v.startswith(prefix)]
        if len(hits) != 1:
            what = "no variant" if not hits else f"{len(hits)} variants"
            raise KeyError(f"{what} match {prefix!r} in {self.root}")
        return hits[0]

    # -- results -------------------------------------------------------------
    def append_result(self, row: dict) -> Path:
        """Appends one result row as its own Parquet file, atomically."""
        full = {name: row.get(name) for name in RESULT_SCHEMA.names}
        for key in ("record", "metrics", "curve"):
            if not isinstance(full[key], (str, type(None))):
                full[key] = json.dumps(full[key], sort_keys=True)
        table = pa.Table.from_pylist([full], schema=RESULT_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path = self.population / f"{time.time_ns():020d}-{row['variant_id']}.parquet"
        atomic_write(path, sink.getvalue().to_pybytes())
        return path

    def _parts(self) -> list[Path]:
        """The loose result parts, oldest first (their names start with the write time)."""
        return sorted(p for p in self.population.glob("*.parquet") if p.name != COMPACTED)

    def result(self, vid: str) -> dict | None:
        """Returns the recorded result row of variant `vid` (JSON columns parsed), or None."""
        for _ in range(3):
            parts = sorted(self.population.glob(f"*-{vid}.parquet"))
            if parts:
                try:
                    return parsed(pq.read_table(parts[0], schema=RESULT_SCHEMA).to_pylist()[0])
                except FileNotFoundError:
                    continue  # compacted since the listing: look again
            # parts are removed only after compacted.parquet holds their rows
            merged = self.population / COMPACTED
            if not merged.is_file():
                return None
            rows = pq.read_table(merged, schema=RESULT_SCHEMA, filters=[("variant_id", "==", vid)]).to_pylist()
            return parsed(rows[0]) if rows else None
        return None

    def read_results(self) -> pa.Table:
        """Returns every readable result row, oldest first.

        A part that cannot be read (truncated or corrupt on disk) is left
        out; `self.unreadable` then names it with the reason, one line each.
        """
        for _ in range(5):  # a concurrent compaction moved parts we listed: read again
            try:
                return self._read_results()
            except FileNotFoundError:
                continue
        return self._read_results()

    def _read_results(self) -> pa.Table:
        tables, self.unreadable = [], []
        # the parts are listed before the merged file is read: a compaction that lands in between has
        # removed a listed part (read again), never one the listing missed with its rows not yet merged
        parts = self._parts()
        merged = self.population / COMPACTED
        if merged.is_file():
            tables.append(pq.read_table(merged, schema=RESULT_SCHEMA))
        for part in parts:
            try:
                tables.append(pq.read_table(part, schema=RESULT_SCHEMA))
            except FileNotFoundError:
                raise  # compacted since the listing: read_results reads again
            except (OSError, pa.ArrowException) as e:
                reason = " ".join(str(e).split())[:200]
                self.unreadable.append(f"population/{part.name} is unreadable ({reason}); left out")
        return pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()

    def compact(self, at: int = COMPACT_AT) -> int:
        """Merges the loose result parts into compacted.parquet once there are `at` of them.

        Returns how many parts were merged (0 below `at`). The merged file
        is written whole and renamed into place before any part is removed,
        so a crash in between leaves rows twice, never lost (readers keep
        the last row of a variant). An unreadable part stays where it is.
        Only the driver, the one writer of population/, calls this.
        """
        parts = self._parts()
        if len(parts) < at:
            return 0
        merged = self.population / COMPACTED
        tables = [pq.read_table(merged, schema=RESULT_SCHEMA)] if merged.is_file() else []
        taken = []
        for part in parts:
            try:
                tables.append(pq.read_table(part, schema=RESULT_SCHEMA))
                taken.append(part)
            except (OSError, pa.ArrowException):
                continue  # read_results names it; it is not ours to delete
        sink = pa.BufferOutputStream()
        pq.write_table(pa.concat_tables(tables), sink, row_group_size=64 * 1024)
        atomic_write(merged, sink.getvalue().to_pybytes())
        for part in taken:
            part.unlink()
            mirror.removed(part)  # from the bucket too, now that the merged file is there
        return len(taken)
