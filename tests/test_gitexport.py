"""`evolve export-git`: the lineage as a git repository that git's own tools read."""

import subprocess

import pytest

from evolve import cli
from evolve.spec import SpecError
from evolve.read.gitexport import export_git, lineage_order
from evolve.record.store import Store
from evolve.variant import Variant

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]


def git(repo, *args):
    return subprocess.run([*GIT, "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def small_run(root):
    """seed -> a (lr 0.002) -> c (merge of a and b); seed -> b (dropout 0.1); c is the best."""
    store = Store(root)
    (root / "spec.yaml").write_text("objective: {metric: heldout_loss, mode: min}\n")

    def add(text, parents=(), op="seed", why="the scaffold as written", fitness=None, t=0.0, extra=None):
        files = {"config.yaml": text.encode(), "recipe.py": b"def hook():\n    return 1\n"}
        files.update(extra or {})
        v = Variant(files=store.put_files(files), parents=tuple(p.id for p in parents), operator=op,
                    record={"kind": op, "rationale": why}, created_at=1_795_000_000 + t)
        store.put_variant(v)
        store.append_result({"variant_id": v.id, "status": "completed" if fitness else "failed",
                             "failure_reason": None if fitness else "NaN loss", "fitness": fitness,
                             "operator": op, "parent_ids": list(v.parents), "record": v.record,
                             "metrics": {}, "curve": []})
        return v

    seed = add("lr: 0.001\ndropout: 0.0\n", fitness=3.0)
    a = add("lr: 0.002\ndropout: 0.0\n", [seed], "perturb", "raise lr", 2.9, t=1)
    b = add("lr: 0.001\ndropout: 0.1\n", [seed], "llm", "add dropout\n\nregularise a little", None, t=2,
            extra={"notes/why.md": b"dropout helps\n"})
    c = add("lr: 0.002\ndropout: 0.1\n", [a, b], "crossover", "take lr from a, dropout from b", 2.7, t=3)
    return seed, a, b, c


@pytest.mark.warm
def test_lineage_is_commits_with_parents_messages_and_a_champion(tmp_path):
    seed, a, b, c = small_run(tmp_path / "run")
    assert cli.main(["export-git", str(tmp_path / "run"), str(tmp_path / "repo")]) == 0
    repo = tmp_path / "repo"
    assert git(repo, "rev-parse", "main") == git(repo, "rev-parse", c.id)  # main is the champion
    assert git(repo, "log", "--format=%s", "main").splitlines() == [
        "crossover: take lr from a, dropout from b", "llm: add dropout", "perturb: raise lr",
        "seed: the scaffold as written"]
    parents = git(repo, "rev-list", "--parents", "-n1", c.id).split()[1:]
    assert parents == [git(repo, "rev-parse", a.id).strip(), git(repo, "rev-parse", b.id).strip()]
    body = git(repo, "log", "-n1", "--format=%B", b.id)
    assert "regularise a little" in body and "status: failed: NaN loss" in body and f"variant: {b.id}" in body
    assert "status: completed, heldout_loss 2.7" in git(repo, "log", "-n1", "--format=%B", c.id)
    assert git(repo, "diff", seed.id, a.id, "--", "config.yaml").count("\n-lr: 0.001") == 1
    assert git(repo, "show", f"{b.id}:notes/why.md") == "dropout helps\n"  # folders inside a variant
    assert (repo / "config.yaml").read_text() == "lr: 0.002\ndropout: 0.1\n"  # main is checked out
    assert git(repo, "log", "-n1", "--format=%at", seed.id).strip() == "1795000000"
    # the usual tools work: revert the crossover's change on main
    git(repo, "revert", "--no-edit", "-m", "1", "main")  # a merge: back to its first parent
    assert (repo / "config.yaml").read_text() == "lr: 0.002\ndropout: 0.0\n"


@pytest.mark.unit
def test_a_second_export_into_a_used_folder_is_refused(tmp_path, capsys):
    small_run(tmp_path / "run")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "x").write_text("")
    with pytest.raises(SpecError, match="exists and is not empty"):
        export_git(tmp_path / "run", tmp_path / "repo")
    assert cli.main(["export-git", str(tmp_path / "run"), str(tmp_path / "repo")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.unit
def test_parents_come_before_children_whatever_their_times():
    older_child = Variant(files={"a": "1"}, parents=("p",), created_at=1.0)
    parent = Variant(files={"a": "2"}, created_at=5.0)
    vs = {older_child.id: Variant(files={"a": "1"}, parents=(parent.id,), created_at=1.0), parent.id: parent}
    assert lineage_order(vs) == [parent.id, older_child.id]
