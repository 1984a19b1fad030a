"""Run folders in S3-compatible storage: a real server on 127.0.0.1, spoken to over the wire."""

import shutil
import threading
import time
import uuid

import pyarrow.fs as pafs
import pytest

from evolve.record import mirror
from evolve.read.population import load_population
from evolve.record.store import Store, atomic_write
from evolve.variant import Variant


@pytest.fixture
def uri(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOLVE_CACHE", str(tmp_path / "cache"))
    return f"s3://runs/t/{uuid.uuid4().hex[:8]}"


def remote(uri):
    fs, base = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path[len(base) + 1:]: i for i in info if i.type == pafs.FileType.File}


def read_remote(uri, rel):
    fs, base = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(f"{base}/{rel}") as f:
        return f.read()


def write_remote(uri, rel, data):
    fs, base = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(f"{base}/{rel}") as f:
        f.write(data)


def _result(store, i):
    v = Variant(files=store.put_files({"config.yaml": f"lr: {i}\n".encode()}), operator="perturb")
    store.put_variant(v)
    store.append_result({"variant_id": v.id, "parent_ids": [], "operator": "perturb", "record": {"i": i},
                         "status": "completed", "fitness": 3.0 - i / 10, "curve": [[i, 2.0, 3.0]]})
    return v.id


@pytest.mark.unit
def test_uris_and_their_local_copies(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOLVE_CACHE", str(tmp_path))
    assert mirror.is_uri("s3://b/k") and mirror.is_uri("gs://b/k")
    assert not mirror.is_uri("runs/x") and not mirror.is_uri("/abs/x") and not mirror.is_uri("file:///x")
    assert mirror.local_copy("s3://bucket/runs/a/") == tmp_path / "s3" / "bucket" / "runs" / "a"
    with pytest.raises(ValueError, match="storage: cannot open 'nosuch://b/k'"):
        mirror.Mirror(tmp_path / "x", "nosuch://b/k")


@pytest.mark.warm
def test_every_record_is_in_the_bucket_when_its_write_returns(uri):
    local = mirror.local_copy(uri)
    m = mirror.Mirror(local, uri, interval_s=3600).start()  # no sweep: only the writes' own uploads
    try:
        store = Store(local)
        vid = _result(store, 1)
        got = remote(uri)
        assert f"variants/{vid}.json" in got and any(k.startswith("population/") for k in got)
        assert any(k.startswith("objects/") for k in got)
        atomic_write(local / "trials" / vid / "out.txt", b"scratch")  # a node's scratch stays local
        atomic_write(local / "tune" / "state.json", b"{}")  # Tune's folder waits for the sweeper
        assert not any(k.startswith(("trials/", "tune/")) for k in remote(uri))
        (local / "kept").mkdir()
        (local / "kept" / f"{vid}.json").write_text("{}")  # written by another process
        assert m.push() == 2 and "kept/" + vid + ".json" in remote(uri) and "tune/state.json" in remote(uri)
        assert m.push() == 0  # nothing changed since
    finally:
        m.stop()


@pytest.mark.warm
def test_a_sweep_uploads_tunes_experiment_state_after_the_rest(uri):
    """A bucket holding Tune's experiment state holds what a resume needs with it, even if the head died mid-sweep."""
    sent = []

    class Recording(mirror.Mirror):
        def upload(self, path):
            sent.append(path.name)
            return super().upload(path)

    local = mirror.local_copy(uri)
    for rel in ("tune/experiment_state-1.json", "tune/tuner.pkl", "tune/searcher-state-1.pkl",
                "tune/trainable_1/result.json", "population/1-a.parquet", "work/a/recipe.py"):
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(rel.encode())
    m = Recording(local, uri, interval_s=3600)
    assert m.push() == 5 and sent[-1] == "experiment_state-1.json" and "recipe.py" not in sent
    assert set(remote(uri)) == {"tune/experiment_state-1.json", "tune/tuner.pkl", "tune/searcher-state-1.pkl",
                                "tune/trainable_1/result.json", "population/1-a.parquet"}


@pytest.mark.warm
def test_compaction_removes_merged_parts_from_the_bucket_after_the_merged_file(uri):
    local = mirror.local_copy(uri)
    m = mirror.Mirror(local, uri, interval_s=3600).start()
    try:
        store = Store(local)
        ids = [_result(store, i) for i in range(4)]
        assert store.compact(at=4) == 4
        parts = [k for k in remote(uri) if k.startswith("population/")]
        assert parts == ["population/compacted.parquet"]
    finally:
        m.stop()
    fresh = mirror.Mirror(local.parent / "elsewhere", uri)
    assert fresh.pull() > 0
    assert list(load_population(fresh.local)["variant_id"]) == ids


@pytest.mark.warm
def test_a_run_in_the_bucket_reads_anywhere(uri, tmp_path, capsys):
    from evolve import cli

    local = mirror.local_copy(uri)
    with mirror.session(uri) as folder:
        assert folder == local
        store = Store(folder)
        ids = [_result(store, i) for i in range(3)]
        (folder / "spec.yaml").write_text("objective: {metric: heldout_loss, mode: min}\n")
    shutil.rmtree(local)  # another machine: nothing local
    pop = load_population(uri)  # fetched into the local copy first
    assert list(pop["variant_id"]) == ids and pop.best_id() == ids[2]
    shutil.rmtree(local)
    assert cli.main(["status", uri]) == 0 and "completed 3" in capsys.readouterr().out
    assert cli.main(["report", uri]) == 0
    assert "report.html" in remote(uri)  # what a command writes goes back to the bucket
    assert cli.main(["status", "s3://runs/none-here"]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.warm
def test_an_unreachable_bucket_is_one_line(tmp_path, monkeypatch, capsys):
    from evolve import cli

    monkeypatch.setenv("EVOLVE_CACHE", str(tmp_path))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert cli.main(["status", "s3://runs/x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("evolve: error: ") and len(err.strip().splitlines()) == 1


def tune_knows(uri, files):
    """Whether Tune's newest snapshot in the bucket holds a trial of each of the two variants the bucket holds."""
    ids = [k[len("variants/"):-len(".json")] for k in files if k.startswith("variants/")]
    states = sorted(k for k in files if k.startswith("tune/experiment_state"))
    return len(ids) == 2 and bool(states) and all(i in read_remote(uri, states[-1]).decode() for i in ids)


@pytest.mark.search
def test_a_search_in_the_bucket_resumes_on_another_head(uri, experiment, tmp_path):
    """The driver is killed mid-search and its disk lost; `evolve resume URI` finishes from the bucket.

    The LLM operator writes the children, and the test holds the second child's reply until after
    the kill: however fast the machine, at most the seed and the first child are recorded by then.
    The kill waits until Tune's snapshot in the bucket holds the first child's trial, so the resume
    always restores that trial (running or finished) on a head whose `work/` folder is gone.

    Tune saves the searcher's state apart from its experiment state, and a sweep can upload one
    from before a change and the other from after (CI once resumed such a pair and waited for
    good). The test holds the first child's reply until the bucket holds a searcher state, keeps
    that one (it knows no child), and puts it back after the kill: the resume always meets the pair.
    """
    from tests.agent_replies import lr_edit
    from tests.openai_server import Reply, ScriptedOpenAI
    from tests.test_resume import evolve, kill_group, lose_the_head

    held, release, asked = threading.Event(), threading.Event(), [0]
    kept, stale = threading.Event(), {}

    def respond(body):
        asked[0] += 1
        if asked[0] == 1:  # no child until a searcher state that knows none is kept
            kept.wait(300)
        if asked[0] == 2 and not release.is_set():  # the second child's reply waits for the kill
            held.set()
            release.wait()
            return Reply(status=503)  # to a driver that is gone
        return Reply(text=lr_edit(body, round(1.0 + 0.07 * asked[0], 2)))

    log = open(tmp_path / "run.log", "wb")
    with ScriptedOpenAI(respond) as server:
        llm = ["operator.kind=llm", "operator.model=scripted", f"operator.base_url={server.url}",
               "operator.smoke_steps=0", "operator.parallel=1", "operator.ahead=2", "operator.retries=0",
               "operator.timeout_s=600", "operator.wait_s=600", "operator.notebook_every=0"]
        p = evolve("run", str(experiment), "budget.trials=3", "budget.concurrent=1", "budget.train_tokens=8192",
                   "trial.report_every=2", "confirm.top=0", *llm, "--run-dir", uri, log=log)
        try:
            deadline, ready = time.time() + 600, False
            while not ready and time.time() < deadline and p.poll() is None:
                files = remote(uri)
                if not kept.is_set() and any(k.startswith("tune/searcher-state") for k in files):
                    assert sum(k.startswith("variants/") for k in files) == 1  # the seed alone
                    stale.update({k: read_remote(uri, k) for k in files
                                  if k.startswith(("tune/searcher-state", "tune/search_gen_state"))})
                    kept.set()
                # a result and Tune's state are in the bucket, the last child not yet written
                ready = held.is_set() and any(k.startswith("population/") for k in files) and tune_knows(uri, files)
                time.sleep(0 if ready else 0.5)
            assert ready and p.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        finally:
            lose_the_head(p)
            kept.set()
            release.set()
        before = {k: read_remote(uri, k) for k in remote(uri) if k.startswith("population/")}
        assert 1 <= len(before) < 3
        for k, data in stale.items():  # the bucket's searcher state from before the child was suggested
            write_remote(uri, k, data)
        shutil.rmtree(mirror.local_copy(uri))  # the head node is gone, and its disk with it

        q = evolve("resume", uri, log=log)
        try:
            assert q.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-3000:]
        finally:
            kill_group(q)
    assert "fetched" in (tmp_path / "run.log").read_text()
    if len(before) == 1:  # the child's trial was live in Tune's state, and the kept searcher state knew no child
        assert "Ray Tune's state and the searcher's differ: 1 trial(s) Tune runs again taken in" in \
            (tmp_path / "run.log").read_text()
    shutil.rmtree(mirror.local_copy(uri))
    pop = load_population(uri)  # as the bucket holds it
    assert len(pop) == 3 and pop["variant_id"].is_unique and (pop["status"] == "completed").all()
    assert (pop["operator"] == "llm").sum() == 2  # both children the agent's, the held one asked again
    assert {k: read_remote(uri, k) for k in before} == before  # rows recorded before the kill untouched
