"""Resume: a search whose driver is killed continues from its run folder, losing and repeating nothing."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from evolve.read.population import load_population
from evolve.spec import SpecError, load_run_spec

CKPT = 10_240  # one report of the seed (10 steps of 1,024 tokens)
BUDGET = 8 * CKPT


def recorded(run):
    return {p.name.split("-", 1)[1][:-len(".parquet")]: p.stat().st_mtime_ns
            for p in (run / "population").glob("*.parquet")}


def checkpointed_but_running(run):
    """Variants with a checkpoint in Tune's storage that have not finished (no kept result, no row)."""
    done = set(recorded(run)) | {p.stem for p in (run / "kept").glob("*.json")}
    out = set()
    for state in run.glob("tune/*/checkpoint_*/evolve_state.json"):
        vid = json.loads(state.read_text())["variant_id"]
        if vid not in done:
            out.add(vid)
    return out


def known_to_tune(run):
    """{variant: tokens} of the latest checkpoint Ray Tune's last saved experiment state records: what resume restores.

    File times cannot tell this: on a busy machine the driver may take the checkpoint's report in
    seconds after the trial wrote it, and a snapshot saved in between does not know it.
    """
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    states = sorted(run.glob("tune/experiment_state-*.json"), key=lambda s: s.stat().st_mtime)
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else []
    except (OSError, ValueError):  # replaced while read
        return {}
    out = {}
    for _, metadata in trials:
        latest = _TrainingRunMetadata.from_json_state(metadata).checkpoint_manager.latest_checkpoint_result
        if latest is not None:
            state = Path(latest.checkpoint.path) / "evolve_state.json"
            if state.is_file():
                saved = json.loads(state.read_text())
                out[saved["variant_id"]] = saved["tokens"]
    return out


def checkpointed_tokens(run):
    """{variant: tokens} of the newest checkpoint each trial has committed to Tune's storage: how far it is."""
    out = {}
    for state in run.glob("tune/*/checkpoint_*/evolve_state.json"):
        try:
            saved = json.loads(state.read_text())
        except (OSError, ValueError):  # being written
            continue
        out[saved["variant_id"]] = max(out.get(saved["variant_id"], 0), saved["tokens"])
    return out


def evolve(*args, **kw):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    launch = kw.get("launch", ["-m", "evolve.cli"])
    return subprocess.Popen([sys.executable, *launch, *args], env=env, start_new_session=True,
                            stdout=kw["log"], stderr=subprocess.STDOUT)


# `evolve` that kills itself with SIGKILL inside its N-th write of a result: the row's file is
# written and flushed, the rename that would publish it has not happened (Python's audit hooks
# see every os.replace).
KILLED_IN_A_RESULT_WRITE = """
import os, signal, sys
left = int(sys.argv.pop(1))
def hook(event, args):
    global left
    if event == "os.rename" and "/population/" in str(args[1]):
        left -= 1
        if left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
from evolve.cli import main
sys.exit(main(sys.argv[1:]))
"""


def kill_group(p):
    """SIGKILL to the driver, then to what it started in its session (a crashed head node)."""
    p.send_signal(signal.SIGKILL)
    p.wait()
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def descendants(pid):
    """Every live process below `pid` (Ray's processes start their own sessions, so no group holds them)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def lose_the_head(p):
    """SIGKILL to the driver and every process it started, as when the machine is gone."""
    doomed = [p.pid, *descendants(p.pid)]
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") and not _zombie(pid) for pid in doomed):
        time.sleep(0.1)


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def resume_to_the_end(run, log, before, trials):
    """Runs `evolve resume` to the end; checks every variant is there once and the rows of `before` untouched."""
    q = evolve("resume", str(run), log=log)
    try:
        assert q.wait(timeout=900) == 0, Path(log.name).read_text()[-3000:]
    finally:
        kill_group(q)
    after = recorded(run)
    pop = load_population(run)
    assert len(pop) == trials and pop["variant_id"].is_unique  # none missing, none twice
    assert (pop["status"] == "completed").all()
    assert {v: after[v] for v in before} == before  # what was recorded is untouched
    return pop


def start_search(experiment, tmp_path, trials):
    """Starts `evolve run` with checkpoints; returns (run folder, log file, process)."""
    run = tmp_path / "run"
    log = open(tmp_path / "run.log", "wb")
    return run, log, evolve("run", str(experiment), f"budget.trials={trials}", f"budget.train_tokens={BUDGET}",
                            "trial.report_every=10", f"trial.checkpoint_tokens={CKPT}", "confirm.top=0", "--run-dir", str(run),
                            log=log)


HOLD_AT = 3 * CKPT  # tokens after which every rank of the held experiment waits for its release

# Appended to the seed's recipe.py (so every variant carries it: the heuristic operator changes
# only config.yaml): past HOLD_AT tokens a rank waits until a file named `release` appears beside
# its recipe.py, in the run folder's work/<variant>/. The test holds a trial there, after checkpoints
# Tune knows and long before its budget, for as long as it needs: however fast the machine, the
# trial cannot finish before the kill.
HOLD = f"""

HOLD_AT = {HOLD_AT}


def batches(data, cfg, generator, _seed_batches=batches):
    import os
    import time

    release = os.path.join(os.path.dirname(os.path.abspath(__file__)), "release")
    tokens = 0
    for batch in _seed_batches(data, cfg, generator):
        while tokens >= HOLD_AT and not os.path.exists(release):
            time.sleep(0.05)
        tokens += cfg["batch_size"] * cfg["seq_len"]
        yield batch
"""


def hold_every_rank(experiment):
    """Makes every variant of the experiment wait past HOLD_AT tokens until `Releaser` lets it go."""
    recipe = experiment / "scaffold" / "recipe.py"
    recipe.write_text(recipe.read_text() + HOLD)


class Releaser:
    """Lets held ranks go: a thread writes `release` beside every variant's files but those in `keep`.

    Releases nothing until `release_all_but` or `release_all` is called.
    """

    def __init__(self, run):
        self.run, self.keep, self.on = run, set(), False
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="releaser", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=10)

    def release_all_but(self, *keep):
        self.keep, self.on = set(keep), True

    def release_all(self):
        self.release_all_but()

    def _loop(self):
        while not self.stopped.wait(0.1):
            if not self.on:
                continue
            for d in list((self.run / "work").glob("*")):
                if d.name not in self.keep and not (d / "release").exists():
                    try:
                        (d / "release").touch()
                    except OSError:  # a variant's folder being written
                        pass


def held_with_a_checkpoint(run):
    """Variants still training (no row, no kept result) whose checkpoint Tune's saved state records."""
    known = known_to_tune(run)
    return sorted(v for v in checkpointed_but_running(run) if v in known)


@pytest.mark.search
def test_a_driver_killed_while_trials_train_resumes_without_loss_or_repeats(experiment, tmp_path):
    hold_every_rank(experiment)
    run, log, p = start_search(experiment, tmp_path, 5)
    with Releaser(run) as releaser:
        try:
            deadline, victim = time.time() + 900, None
            while time.time() < deadline and p.poll() is None:
                if victim is None:
                    # the first trial with a checkpoint Tune knows stays held; the others train to the end
                    candidates = held_with_a_checkpoint(run)
                    if candidates:
                        victim = candidates[0]
                        releaser.release_all_but(victim)
                elif recorded(run):
                    break  # a row recorded, and the victim still held at HOLD_AT tokens
                time.sleep(0.2)
            assert p.poll() is None and victim and recorded(run), (tmp_path / "run.log").read_text()[-3000:]
        finally:
            lose_the_head(p)  # Ray's workers start their own sessions: a trial would outlive its group's kill
        before = recorded(run)
        assert 1 <= len(before) < 5 and victim not in before
        assert not (run / "kept" / f"{victim}.json").exists()  # it was held: it never finished
        assert checkpointed_tokens(run)[victim] <= BUDGET - 3 * CKPT  # held far from its end
        running = {victim}

        releaser.release_all()
        pop = resume_to_the_end(run, log, before, 5)
    rows = pop.set_index("variant_id")
    # a trial running at the kill continued from its checkpoint: it trained only the rest of its
    # budget, and its record holds the whole curve
    resumed = [v for v in running if v in rows.index and rows.loc[v, "tokens_trained"] <= BUDGET - CKPT]
    assert resumed, rows.loc[list(running & set(rows.index)), ["tokens_trained"]]
    start = BUDGET - rows.loc[resumed[0], "tokens_trained"]  # the checkpoint it continued from
    curve = pop.curve(resumed[0])
    assert curve[0][0] <= start < curve[-1][0] and curve[-1][0] >= BUDGET - 2048  # points from before it too
    assert [p[0] for p in curve] == sorted({p[0] for p in curve})  # and none twice


@pytest.mark.unit
def test_resume_needs_a_run_folder_with_tune_state(tmp_path, experiment):
    from evolve import cli

    with pytest.raises(SpecError, match="spec.yaml' not found"):
        load_run_spec(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "spec.yaml").write_text("scaffold: [unclosed")
    with pytest.raises(SpecError, match="is corrupt"):
        load_run_spec(tmp_path / "bad")
    assert cli.main(["resume", str(tmp_path / "bad")]) == 2
    import yaml

    from evolve.spec import load_spec
    from evolve.driver import resume_search

    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "spec.yaml").write_text(yaml.safe_dump(load_spec(experiment).to_dict()))
    with pytest.raises(SpecError, match="Ray Tune never saved this search's state"):
        resume_search(tmp_path / "fresh")


def rank_process(run, vid):
    """The pid of the process training rank 0 of variant `vid` (its output goes to rank0.log)."""
    target = str(run / "trials" / vid / "rank0.log")
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            try:
                if os.readlink(f"/proc/{proc}/fd/1") == target:
                    return int(proc)
            except OSError:
                continue
    return None


@pytest.mark.search
def test_a_killed_training_process_is_retried_from_its_checkpoint(experiment, tmp_path):
    hold_every_rank(experiment)
    run, log, p = start_search(experiment, tmp_path, 2)
    with Releaser(run) as releaser:
        try:
            deadline, victim = time.time() + 900, None
            while time.time() < deadline and p.poll() is None and victim is None:
                # held at HOLD_AT tokens, after a checkpoint Tune knows: it cannot finish before the kill
                for vid in held_with_a_checkpoint(run):
                    pid = rank_process(run, vid)
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)  # the rank dies mid-trial, as on a lost node
                        victim = vid
                        break
                time.sleep(0.2)
            assert victim, (tmp_path / "run.log").read_text()[-3000:]
            releaser.release_all()  # the retried trial, and the other, train to the end
            assert p.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-3000:]
        finally:
            kill_group(p)
    pop = load_population(run).set_index("variant_id")
    assert len(pop) == 2 and (pop["status"] == "completed").all()
    assert pop.loc[victim, "tokens_trained"] <= BUDGET - CKPT  # continued from its checkpoint


@pytest.mark.unit
def test_corrupt_tune_state_is_one_line_and_changes_nothing(tmp_path, experiment):
    import yaml

    from evolve.spec import load_spec
    from evolve.driver import resume_search

    run = tmp_path / "run"
    (run / "tune").mkdir(parents=True)
    (run / "spec.yaml").write_text(yaml.safe_dump(load_spec(experiment).to_dict()))
    (run / "tune" / "tuner.pkl").write_bytes(b"\x80\x05truncat")
    with pytest.raises(SpecError, match=r"cannot be restored: UnpicklingError") as e:
        resume_search(run)
    assert "\n" not in str(e.value)
    (run / "tune" / "experiment_state-2026-11-29_07-00-00.json").write_text('{"trial_data": [')
    with pytest.raises(SpecError, match=r"experiment_state-2026-11-29_07-00-00.json' is corrupt"):
        resume_search(run)
    assert (run / "tune" / "tuner.pkl").read_bytes() == b"\x80\x05truncat"  # nothing was touched


@pytest.mark.unit
def test_a_truncated_result_file_is_named_and_left_out(tmp_path, capsys):
    from evolve import cli
    from evolve.record.store import Store

    from evolve.variant import Variant

    store = Store(tmp_path)
    ids = []
    for text, fitness in (("a", 2.5), ("b", 2.4)):
        v = Variant(files=store.put_files({"config.yaml": text.encode()}), operator="seed")
        store.put_variant(v)
        ids.append(v.id)
        store.append_result({"variant_id": v.id, "status": "completed", "fitness": fitness, "operator": "seed",
                             "parent_ids": [], "record": {}, "metrics": {}, "curve": []})
    part = next(tmp_path.glob(f"population/*-{ids[1]}.parquet"))
    part.write_bytes(part.read_bytes()[:40])
    pop = load_population(tmp_path)
    assert list(pop["variant_id"]) == ids[:1]
    assert pop.attrs["unreadable"] == [f"population/{part.name} is unreadable "
                                       f"({pop.attrs['unreadable'][0].split('(', 1)[1]}"]
    assert cli.main(["status", str(tmp_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"evolve: warning: population/{part.name} is unreadable (")


SHORT = 16_384  # tokens per trial where no checkpoint is needed


@pytest.mark.search
def test_a_driver_killed_while_writing_a_result_resumes_without_training_it_again(experiment, tmp_path):
    run, log = tmp_path / "run", open(tmp_path / "run.log", "wb")
    p = evolve("2", "run", str(experiment), "budget.trials=4", f"budget.train_tokens={SHORT}",
               "trial.report_every=10", "confirm.top=0", "--run-dir", str(run), log=log, launch=["-c", KILLED_IN_A_RESULT_WRITE])
    try:
        assert p.wait(timeout=900) == -signal.SIGKILL, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        kill_group(p)
    killed_at = time.time()
    before = recorded(run)
    unfinished = list((run / "population").glob(".*.tmp"))
    assert len(before) == 1 and len(unfinished) == 1  # one row recorded, the second half-published
    interrupted = unfinished[0].name.split("-", 1)[1].split(".parquet")[0]

    pop = resume_to_the_end(run, log, before, 4).set_index("variant_id")
    assert "removed population/." in (tmp_path / "run.log").read_text()
    assert not list((run / "population").glob(".*.tmp"))
    # the trial whose row was being written had finished: its kept result is recorded, not retrained
    assert pop.loc[interrupted, "started_at"] < killed_at and pop.loc[interrupted, "tokens_trained"] >= SHORT


@pytest.mark.search
def test_a_driver_killed_while_a_proposal_is_being_made_buys_no_reply_twice(experiment, tmp_path):
    from tests.agent_replies import lr_edit
    from tests.openai_server import Reply, ScriptedOpenAI

    held, release, answered, asked = threading.Event(), threading.Event(), [], [0]

    def respond(body):
        asked[0] += 1
        if asked[0] == 3 and not release.is_set():  # the third proposal is being made at the kill
            held.set()
            release.wait()
            return Reply(status=503)  # to a driver that is gone
        factor = round(1.0 + 0.07 * asked[0], 2)
        answered.append(factor)
        return Reply(text=lr_edit(body, factor))

    with ScriptedOpenAI(respond) as server:
        run, log = tmp_path / "run", open(tmp_path / "run.log", "wb")
        llm = ["operator.kind=llm", "operator.model=scripted", f"operator.base_url={server.url}",
               "operator.smoke_steps=0", "operator.parallel=1", "operator.ahead=2", "operator.retries=0",
               "operator.timeout_s=600", "operator.wait_s=600", "operator.notebook_every=0"]
        p = evolve("run", str(experiment), "budget.trials=4", f"budget.train_tokens={SHORT}",
                   "trial.report_every=10", "confirm.top=0", *llm, "--run-dir", str(run), log=log)
        try:
            deadline = time.time() + 900
            while time.time() < deadline and p.poll() is None and not (held.is_set() and recorded(run)):
                time.sleep(0.2)
            assert p.poll() is None and held.is_set(), (tmp_path / "run.log").read_text()[-3000:]
        finally:
            kill_group(p)
            release.set()
        before = recorded(run)
        assert len(before) >= 1 and answered == [1.07, 1.14]

        pop = resume_to_the_end(run, log, before, 4)
    children = pop[pop["operator"] == "llm"]
    # every reply bought became one trained child, and no reply was bought twice
    factors = sorted(float(r["rationale"].split(" by ")[1].split()[0]) for r in children["record"])
    assert factors == sorted(answered) and len(answered) == 3
