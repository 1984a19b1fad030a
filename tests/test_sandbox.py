"""The sandbox's parts on their own: the file view, the result channel, the filter, the levels,
and the evaluation's checks of a saved model. The red team (tests/redteam) attacks the whole."""

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from evolve.rank import channel, landlock, sandbox, syscalls
from evolve.spec import SpecError, load_spec
from evolve.trial.evaluation import EvaluationError, load_checked_model, seal_model
from tests.conftest import TINY_LM


@pytest.mark.unit
def test_the_view_empties_trees_keeps_python_and_never_uncovers_what_is_hidden(tmp_path):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "heldout.bin").write_bytes(b"x")
    (run / "data" / "train.bin").write_bytes(b"x")
    v = sandbox.view({"writable": str(run / "trials" / "a"), "hidden": [str(run / "data" / "heldout.bin")],
                      "hidden_trees": [str(run), "/tmp"],
                      "read": [str(run / "data" / "train.bin"), str(run / "data" / "heldout.bin")]})
    assert str(run) not in v["roots"] and "/tmp" in v["roots"]  # beneath /tmp: one tree covers both
    assert str(run / "data" / "heldout.bin") in v["hidden"]
    assert v["read"] == [str(run / "data" / "train.bin")]  # a hidden path asked for is still hidden
    assert os.path.realpath(sys.base_prefix) in v["python"]
    assert not any(p == "/" or str(run).startswith(p.rstrip("/") + "/") for p in v["python"])


@pytest.mark.unit
def test_a_hidden_module_is_hidden_compiled_too(tmp_path):
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "corpus.py").write_text("TEXT = 'secret'\n")
    (tmp_path / "__pycache__" / "corpus.cpython-311.pyc").write_bytes(b"...")
    (tmp_path / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"...")
    v = sandbox.view({"writable": str(tmp_path), "hidden": [str(tmp_path / "corpus.py")]})
    assert v["hidden"] == sorted([str(tmp_path / "__pycache__" / "corpus.cpython-311.pyc"),
                                  str(tmp_path / "corpus.py")])


@pytest.mark.warm
def test_an_allowlist_is_split_around_a_hidden_file(tmp_path):
    """Landlock cannot subtract: a hidden file beneath a readable folder is refused while the folders
    above it stay listable and every other file beneath them, however deep, stays readable."""
    if landlock.abi() < 1:
        pytest.fail("this kernel has no Landlock: the unprivileged sandbox level cannot work here")
    tree = tmp_path / "tree"
    (tree / "pkg" / "deep").mkdir(parents=True)
    files = ("a.py", "pkg/b.py", "pkg/deep/secret.txt", "pkg/deep/c.py")
    for rel in files:
        (tree / rel).write_text(rel)
    (tmp_path / "outside.txt").write_text("not asked for")
    (tmp_path / "out").mkdir()
    policy = {"level": "unprivileged", "writable": str(tmp_path / "out"), "read": [str(tree)],
              "hidden": [str(tree / "pkg" / "deep" / "secret.txt")], "hidden_trees": []}

    def attempt():
        got = {}
        for rel in (*files, "../outside.txt"):
            try:
                got[rel] = (tree / rel).read_text()
            except OSError as e:
                got[rel] = type(e).__name__
        for rel in (".", "pkg", "pkg/deep"):
            try:
                got[f"ls {rel}"] = ",".join(sorted(os.listdir(tree / rel)))
            except OSError as e:
                got[f"ls {rel}"] = type(e).__name__
        return got

    assert sandbox.run_sandboxed(policy, attempt, confined=False) == {"result": {
        "a.py": "a.py", "pkg/b.py": "pkg/b.py", "pkg/deep/c.py": "pkg/deep/c.py",
        "pkg/deep/secret.txt": "PermissionError", "../outside.txt": "PermissionError",
        "ls .": "a.py,pkg", "ls pkg": "b.py,deep", "ls pkg/deep": "c.py,secret.txt"}}


@pytest.mark.unit
@pytest.mark.parametrize("msg, error", [
    ({"pid": 1}, "malformed message"),
    ({"report": {"x": 1}, "result": 2}, "malformed message"),
    ({"report": [1, 2]}, "not a small mapping"),
    ({"report": {"loss": [1.0]}}, "bad field 'loss'"),
    ({"report": {"loss": float("nan")}}, "bad field 'loss'"),
    ({"report": {"k" * 65: 1}}, "bad field"),
    ({"error": 3}, "not a string"),
])
def test_the_channel_refuses_what_is_not_its_schema(msg, error):
    with pytest.raises(channel.ChannelError, match=error):
        channel.check(msg)


@pytest.mark.unit
def test_the_channel_reads_lines_and_caps_their_size():
    r = channel.Reader()
    assert r.feed(b'{"report": {"step": 1, "dev_loss": 3.5, "last": false}}\n{"res') == [
        {"report": {"step": 1, "dev_loss": 3.5, "last": False}}]
    assert r.feed(b'ult": {"seconds": 1.0}}\n') == [{"result": {"seconds": 1.0}}]
    assert r.feed(b'{"error": "a   b\\nc"}\n') == [{"error": "a b c"}]
    with pytest.raises(channel.ChannelError, match="not JSON"):
        channel.Reader().feed(b"nope\n")
    with pytest.raises(channel.ChannelError, match="over 65,536 bytes"):
        channel.Reader().feed(b"x" * (channel.MAX_LINE + 1))


@pytest.mark.unit
def test_folder_usage_counts_blocks_and_stops_past_the_cap(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 50_000)
    used = channel.folder_usage(str(tmp_path), 1 << 30)
    assert 150_000 <= used < 300_000
    assert channel.folder_usage(str(tmp_path), 1000) == 1001


@pytest.mark.unit
def test_the_filter_names_the_calls_the_issue_lists():
    names = set(syscalls.refused_names())
    for call in ("execve", "execveat", "socket", "connect", "bind", "listen", "accept", "ptrace",
                 "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "unshare", "setns",
                 "chroot", "bpf", "perf_event_open", "io_uring_setup", "io_uring_enter", "io_uring_register",
                 "userfaultfd", "keyctl", "add_key", "request_key", "fork", "vfork", "clone3"):
        assert call in names, call


def _in_child(fn) -> dict:
    """Runs `fn()` in a forked child; returns what it returned (a dict) or its error."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        try:
            out = {"ok": fn()}
        except BaseException as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        b.sendall(json.dumps(out).encode())
        os._exit(0)
    b.close()
    data = a.makefile("rb").read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.warm
def test_the_filter_refuses_in_the_kernel_what_python_would_not_report():
    def attempt():
        syscalls.install()
        out = {}
        for name, call in [("socket", lambda: socket.socket()), ("fork", os.fork),
                           ("kill", lambda: os.kill(os.getppid(), 0)), ("exec", lambda: os.execv("/bin/true", ["t"])),
                           ("self", lambda: os.kill(os.getpid(), 0))]:
            try:
                call()
                out[name] = "allowed"
            except OSError as e:
                out[name] = e.errno
        return out

    got = _in_child(attempt)["ok"]
    assert got == {"socket": 1, "fork": 1, "kill": 1, "exec": 1, "self": "allowed"}


@pytest.mark.warm
def test_landlock_keeps_a_process_to_its_allowlist(tmp_path):
    if landlock.abi() < 1:
        pytest.fail("this kernel has no Landlock: the unprivileged sandbox level cannot work here")
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "f").write_text("yes")
    (tmp_path / "closed").write_text("no")

    def attempt():
        import ctypes

        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # no_new_privs, which Landlock needs
        landlock.restrict([str(tmp_path / "open"), *sandbox.SYSTEM_READ], [])
        out = {"open": (tmp_path / "open" / "f").read_text()}
        try:
            (tmp_path / "closed").read_text()
            out["closed"] = "read"
        except PermissionError:
            out["closed"] = "refused"
        return out

    assert _in_child(attempt)["ok"] == {"open": "yes", "closed": "refused"}


@pytest.mark.warm
@pytest.mark.parametrize("level", sandbox.LEVELS)
def test_each_level_sets_up_here_and_hides_what_it_must(level):
    assert sandbox.probe(level) is None


@pytest.mark.warm
def test_auto_takes_the_full_level_and_says_so():
    assert sandbox.choose("auto") == ("full", "sandbox: full")
    assert sandbox.choose("unprivileged")[1].startswith("sandbox: unprivileged (no user namespaces): forced")
    assert sandbox.choose("off")[0] is None


@pytest.mark.unit
def test_the_sandbox_setting_takes_levels_and_older_booleans():
    assert load_spec(TINY_LM, ["trial.sandbox=unprivileged"]).trial.sandbox == "unprivileged"
    assert load_spec(TINY_LM, ["trial.sandbox=false"]).trial.sandbox == "off"
    assert load_spec(TINY_LM, ["trial.sandbox=true"]).trial.sandbox == "auto"
    with pytest.raises(SpecError, match=r"^trial.sandbox: expected one of auto, full, unprivileged, off, got 'x'$"):
        load_spec(TINY_LM, ["trial.sandbox=x"])
    with pytest.raises(SpecError, match=r"^trial.disk_gb: must be 0 \(no cap\) or more"):
        load_spec(TINY_LM, ["trial.disk_gb=-1"])


# -- the evaluation's checks of a saved model ---------------------------------------------
TASK = {"param_cap": 200_000, "eval_seq_len": 32}


def _saved(tmp_path, **config):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=None, eos_token_id=None, **config))
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    return model, tmp_path / "model"


@pytest.mark.unit
def test_a_saved_model_loads_as_the_harness_would_build_it(tmp_path):
    import torch

    model, path = _saved(tmp_path)
    loaded = load_checked_model(seal_model(path, tmp_path / "sealed", 10 << 20), TASK, 256)
    x = torch.randint(0, 256, (2, 16))
    assert not loaded.training
    assert torch.allclose(model.eval()(input_ids=x).logits, loaded(input_ids=x).logits)


@pytest.mark.unit
def test_config_json_keys_outside_the_architecture_are_ignored(tmp_path):
    _, path = _saved(tmp_path)
    c = json.loads((path / "config.json").read_text())
    c.update(auto_map={"AutoModelForCausalLM": "evil.Model"}, model_type="llama", trust_remote_code=True,
             vocab_size=999)
    (path / "config.json").write_text(json.dumps(c))
    assert load_checked_model(path, TASK, 256).config.vocab_size == 256  # the data's, not the file's


@pytest.mark.unit
@pytest.mark.parametrize("change, error", [
    ({"n_layer": 3}, "tensors do not match the architecture"),
    ({"n_embd": 256, "n_layer": 4}, "parameters exceed the cap of 200,000"),
    ({"n_positions": 16}, "shorter than the evaluation's context of 32"),
    ({"activation_function": "os.system"}, "unknown activation_function"),
    ({"n_head": "2"}, "bad n_head"),
])
def test_a_saved_model_that_is_not_the_harness_s_fails_in_one_line(tmp_path, change, error):
    _, path = _saved(tmp_path)
    c = json.loads((path / "config.json").read_text())
    c.update(change)
    (path / "config.json").write_text(json.dumps(c))
    with pytest.raises(EvaluationError, match=error):
        load_checked_model(path, TASK, 256)


@pytest.mark.unit
def test_sealing_refuses_links_pickles_and_oversized_weights(tmp_path):
    _, path = _saved(tmp_path)
    (path / "model.safetensors").rename(tmp_path / "real.safetensors")
    (path / "model.safetensors").symlink_to(tmp_path / "real.safetensors")
    with pytest.raises(EvaluationError, match="cannot be opened as a plain file"):
        seal_model(path, tmp_path / "s1", 10 << 20)
    (tmp_path / "elsewhere").symlink_to(path, target_is_directory=True)  # the folder itself a link
    with pytest.raises(EvaluationError, match=r"^elsewhere/ cannot be opened as a plain folder"):
        seal_model(tmp_path / "elsewhere", tmp_path / "s0", 10 << 20)
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(EvaluationError, match="the trial saved no model/model.safetensors"):
        seal_model(path, tmp_path / "s2", 10 << 20)
    Path(path / "model.safetensors").write_bytes((tmp_path / "real.safetensors").read_bytes())
    with pytest.raises(EvaluationError, match="bytes, over the 1,000 allowed"):
        seal_model(path, tmp_path / "s3", 1000)
