import os
import shutil

import pyarrow.parquet as pq
import pytest

from evolve.read.population import load_population
from evolve.record.store import Store, atomic_write
from evolve.variant import Variant, variant_id

pytestmark = pytest.mark.unit


def test_blobs_are_content_addressed_and_deduplicated(tmp_path):
    store = Store(tmp_path)
    a = store.put_blob(b"hello")
    assert a == store.put_blob(b"hello")
    assert store.get_blob(a) == b"hello"
    assert len(list((tmp_path / "objects").rglob("*"))) == 2  # one folder, one file
    with pytest.raises(FileNotFoundError, match="blob 00 missing"):
        store.get_blob("00")


def test_variant_id_depends_only_on_files():
    files = {"a.py": "1" * 64, "b.yaml": "2" * 64}
    assert variant_id(files) == variant_id(dict(reversed(list(files.items()))))
    assert Variant(files=files, operator="x").id == Variant(files=files, operator="y").id
    assert variant_id({**files, "a.py": "3" * 64}) != variant_id(files)


def test_variant_round_trip_and_materialize(tmp_path):
    store = Store(tmp_path / "run")
    v = Variant(files=store.put_files({"recipe.py": b"x = 1\n", "sub/c.yaml": b"a: 1\n"}),
                parents=("abc",), operator="perturb", record={"changes": [1]}, island=1)
    store.put_variant(v)
    back = store.get_variant(v.id)
    assert back == v
    assert store.resolve(v.id[:5]) == v.id
    out = store.materialize(v, tmp_path / "out")
    assert (out / "sub" / "c.yaml").read_bytes() == b"a: 1\n"
    with pytest.raises(KeyError, match="no variant match 'zzz'"):
        store.resolve("zzz")


def test_results_append_one_file_each_and_load_as_population(tmp_path):
    store = Store(tmp_path)
    for i, (status, fit) in enumerate([("completed", 3.5), ("failed", None), ("completed", 3.2)]):
        v = Variant(files={"f": str(i) * 64}, parents=() if i == 0 else ("p",), operator="seed" if i == 0 else "perturb")
        store.put_variant(v)
        store.append_result({"variant_id": v.id, "parent_ids": list(v.parents), "operator": v.operator,
                             "record": {"i": i}, "status": status, "fitness": fit,
                             "failure_reason": None if fit else "boom", "curve": [[1, 2.0, 3.0]]})
    assert len(list((tmp_path / "population").glob("*.parquet"))) == 3
    table = store.read_results()
    assert table.num_rows == 3 and table.column("status").to_pylist() == ["completed", "failed", "completed"]
    pop = load_population(tmp_path)
    assert list(pop["record"]) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert pop.loc[pop["fitness"].idxmin(), "fitness"] == 3.2
    assert pop.best_id() == pop.iloc[2]["variant_id"]
    assert pop.seed_id() == pop.iloc[0]["variant_id"]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write(tmp_path / "a" / "b.txt", b"data")
    atomic_write(tmp_path / "a" / "b.txt", b"new")
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"new"
    assert os.listdir(tmp_path / "a") == ["b.txt"]


def test_each_result_file_is_a_complete_parquet_table(tmp_path):
    store = Store(tmp_path)
    path = store.append_result({"variant_id": "v1", "parent_ids": [], "status": "completed", "fitness": 1.0})
    assert pq.read_table(path).num_rows == 1


def test_load_population_of_missing_run_is_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_population(tmp_path / "nope")


def test_lineage_and_depth_follow_first_parents(tmp_path):
    store = Store(tmp_path)
    ids = {}
    for name, parents in [("a", ()), ("b", ("a",)), ("c", ("b", "a")), ("d", ("a",))]:
        v = Variant(files={"f": name * 64}, parents=tuple(ids[p] for p in parents))
        ids[name] = store.put_variant(v)
        store.append_result({"variant_id": v.id, "parent_ids": list(v.parents), "status": "completed",
                             "fitness": {"a": 3.0, "b": 2.5, "c": 2.0, "d": 2.8}[name]})
    pop = load_population(tmp_path)
    assert pop.depth() == 2
    assert pop.lineage("best") == [ids["a"], ids["b"], ids["c"]]
    assert pop.lineage(ids["d"][:6]) == [ids["a"], ids["d"]]


def test_result_of_one_variant_is_read_back_parsed(tmp_path):
    from evolve.record.store import Store

    store = Store(tmp_path)
    assert store.result("abc") is None
    store.append_result({"variant_id": "abc", "status": "completed", "fitness": 2.5, "record": {"kind": "seed"},
                         "metrics": {"heldout_loss": 2.5}, "curve": [[1024, 3.0, 2.9]]})
    row = store.result("abc")
    assert row["fitness"] == 2.5 and row["curve"] == [[1024, 3.0, 2.9]] and row["record"] == {"kind": "seed"}


def _add(store, i, fitness=1.0):
    v = Variant(files={"f": f"{i:064d}"}, operator="perturb")
    store.append_result({"variant_id": v.id, "parent_ids": [], "operator": "perturb", "record": {"i": i},
                         "status": "completed", "fitness": fitness, "curve": [[i, 2.0, 3.0]]})
    return v.id


def test_compaction_merges_parts_and_every_row_stays_findable(tmp_path):
    store = Store(tmp_path)
    ids = [_add(store, i) for i in range(5)]
    assert store.compact(at=6) == 0 and len(list(store.population.glob("*.parquet"))) == 5
    assert store.compact(at=5) == 5
    assert [p.name for p in store.population.iterdir()] == ["compacted.parquet"]
    ids += [_add(store, i) for i in range(5, 8)]
    assert store.result(ids[1])["record"] == {"i": 1}  # from the merged file
    assert store.result(ids[6])["curve"] == [[6, 2.0, 3.0]]  # from its own part
    assert store.result("0" * 32) is None
    assert store.compact(at=3) == 3  # merges into the merged file, order kept
    assert Store(tmp_path).read_results().column("variant_id").to_pylist() == ids
    assert list(load_population(tmp_path)["variant_id"]) == ids


def test_a_crash_between_merge_and_removal_leaves_rows_twice_and_loads_once(tmp_path):
    store = Store(tmp_path)
    ids = [_add(store, i) for i in range(3)]
    parts = {p: p.read_bytes() for p in store.population.glob("*.parquet")}
    store.compact(at=1)
    for p, data in parts.items():  # as if the process died before it removed them
        p.write_bytes(data)
    assert store.read_results().num_rows == 6
    pop = load_population(tmp_path)
    assert list(pop["variant_id"]) == ids and list(pop["record"]) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_a_reader_racing_a_compaction_reads_every_row(tmp_path):
    import threading

    store = Store(tmp_path)
    ids = [_add(store, i) for i in range(40)]
    done, seen = threading.Event(), []

    def read():
        while not done.is_set():
            # distinct variants: between a merge and the removal of its parts a row is there twice
            seen.append(len(set(Store(tmp_path).read_results().column("variant_id").to_pylist())))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40, 200):
            ids.append(_add(store, i))
            store.compact(at=16)
    finally:
        done.set()
        reader.join()
    assert seen and all(n >= 40 for n in seen)  # a row once read is never missed later
    assert seen == sorted(seen)
    assert store.read_results().column("variant_id").to_pylist() == ids


def test_a_population_written_before_the_speed_columns_loads_with_them_empty(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from evolve.record.store import RESULT_SCHEMA, Store

    older = pa.schema([f for f in RESULT_SCHEMA
                       if f.name not in ("tokens_per_s", "mfu", "gpu_hours", "n_params", "optimizer_steps")])
    (tmp_path / "population").mkdir()
    pq.write_table(pa.Table.from_pylist([{"variant_id": "a", "status": "completed", "fitness": 1.0}], schema=older),
                   tmp_path / "population" / "00000001-a.parquet")
    table = Store(tmp_path).read_results()
    assert table.num_rows == 1 and table.column("mfu").to_pylist() == [None]
    assert table.column("n_params").to_pylist() == [None] == table.column("optimizer_steps").to_pylist()


def test_status_shows_gpu_hours_and_mfu_when_trials_ran_on_gpus():
    import pandas as pd

    from evolve.read.status import speed_lines

    pop = pd.DataFrame({"variant_id": ["a", "b", "c"], "gpu_hours": [0.1, 0.2, None], "mfu": [0.31, 0.42, None]})
    assert speed_lines(pop) == ["GPU: 0.30 GPU-hours; MFU median 36.5%, best 42.0% (b)"]
    assert speed_lines(pop.assign(gpu_hours=0.0)) == []


def test_a_restored_trial_writes_its_variant_again_from_the_store(tmp_path):
    """A head resumed from a bucket has no work/ folder (it is never mirrored): the trial writes it again."""
    from evolve.messages import TrialConfig
    from evolve.trial.train import variant_files

    store = Store(tmp_path)
    v = Variant(files=store.put_files({"recipe.py": b"def f(): pass\n", "config.yaml": b"lr: 0.1\n"}), operator="x")
    store.put_variant(v)
    work = tmp_path / "work" / v.id
    config = TrialConfig(variant_dir=str(work), out_dir="o", data_dir="d", task={}, seed=0, train_tokens=4096,
                         run_dir=str(tmp_path), variant_id=v.id)
    assert variant_files(config) is None
    assert (work / "recipe.py").read_bytes() == b"def f(): pass\n" and (work / "config.yaml").is_file()
    (work / "recipe.py").unlink()  # a folder that is there is the searcher's, left as it is
    assert variant_files(config) is None and not (work / "recipe.py").exists()
    shutil.rmtree(work)
    lost = variant_files(config.replace(variant_id="0" * 12))
    assert lost.status == "failed" and lost.failure_reason.startswith(
        "the variant's files cannot be written again from the store: KeyError: ")
