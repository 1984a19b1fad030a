import pytest

from evolve.agent.edits import MAX_REPLY_CHARS, Edit, EditError, apply_edits, check_paths, clean_path, parse_reply

pytestmark = pytest.mark.unit

FILES = {"config.yaml": b"lr: 1.0e-3            # peak\nbatch_size: 16\n", "recipe.py": b"X = 1\n"}

REPLY = """Some preamble the parser ignores.
RATIONALE: A higher peak learning rate
should help at this tiny budget.

FILE: config.yaml
```
<<<<<<< SEARCH
lr: 1.0e-3            # peak   
=======
lr: 2.0e-3            # peak
>>>>>>> REPLACE
```

FILE: guidelines.md
```markdown
# new guidelines
- go faster
```
"""


def test_parse_multi_file_reply():
    rationale, edits = parse_reply(REPLY)
    assert rationale == "A higher peak learning rate should help at this tiny budget."
    assert edits == [Edit("config.yaml", "lr: 1.0e-3            # peak", "lr: 2.0e-3            # peak"),
                     Edit("guidelines.md", None, "# new guidelines\n- go faster\n")]
    out = apply_edits(FILES, edits)
    assert out["config.yaml"] == b"lr: 2.0e-3            # peak\nbatch_size: 16\n"
    assert out["guidelines.md"] == b"# new guidelines\n- go faster\n"
    assert out["recipe.py"] == FILES["recipe.py"]


def test_crlf_replies_parse():
    _, edits = parse_reply(REPLY.replace("\n", "\r\n"))
    assert apply_edits(FILES, edits)["config.yaml"].startswith(b"lr: 2.0e-3")


@pytest.mark.parametrize("reply, message", [
    ("", "reply is empty"),
    ("   \n", "reply is empty"),
    ("FILE: a.py\n```\nx\n```", "reply has no RATIONALE"),
    ("RATIONALE: because", "reply has no FILE: section"),
    ("RATIONALE: r\nFILE: a.py\njust text", "FILE: a.py: expected SEARCH/REPLACE blocks or one fenced whole file"),
    ("x" * (MAX_REPLY_CHARS + 1), "reply is 200,001 characters, over the limit of 200,000"),
])
def test_malformed_replies_are_one_line_errors(reply, message):
    with pytest.raises(EditError) as e:
        parse_reply(reply)
    assert str(e.value) == message


def test_search_must_match_exactly_once():
    with pytest.raises(EditError, match=r"^FILE: config.yaml: SEARCH text not found: 'lr: 9'$"):
        apply_edits(FILES, [Edit("config.yaml", "lr: 9", "lr: 1")])
    twice = {"a.py": b"x = 1\nx = 1\n"}
    with pytest.raises(EditError, match="found 2 times"):
        apply_edits(twice, [Edit("a.py", "x = 1", "x = 2")])
    with pytest.raises(EditError, match="no such file to edit"):
        apply_edits(FILES, [Edit("nope.py", "a", "b")])


def test_untouched_lines_keep_their_bytes():
    files = {"a.py": b"x = 1   \r\ny = 2\nz = 3\n"}
    out = apply_edits(files, [Edit("a.py", "y = 2  ", "y = 20\ny2 = 0")])
    assert out["a.py"] == b"x = 1   \r\ny = 20\ny2 = 0\nz = 3\n"
    assert apply_edits(files, [Edit("a.py", "y = 2", "")])["a.py"] == b"x = 1   \r\nz = 3\n"


@pytest.mark.parametrize("path, message", [
    ("harness/evaluate.py", "FILE: harness/evaluate.py: sealed; the agent may not change it"),
    ("../harness/evaluate.py", "FILE: ../harness/evaluate.py: sealed; the agent may not change it"),
    ("train.sh", "FILE: train.sh: outside the mutable surface (config.yaml, recipe.py)"),
])
def test_paths_outside_the_surface_are_refused(path, message):
    with pytest.raises(EditError) as e:
        check_paths([path], ["config.yaml", "recipe.py"], ["harness/evaluate.py", "harness/data.py"])
    assert str(e.value) == message
    check_paths(["recipe.py"], ["config.yaml", "recipe.py"], ["harness/evaluate.py"])


def test_clean_path():
    assert clean_path("`./config.yaml`") == "config.yaml"


def test_sealed_globs_read_as_sealed():
    with pytest.raises(EditError, match="sealed"):
        check_paths(["harness/evaluate.py"], ["config.yaml"], ["harness/*.py"])
