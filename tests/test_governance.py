import pytest

from evolve.record.seals import SealedFileChanged, check_sealed, hash_files, sealed_paths, surface_violations

pytestmark = pytest.mark.unit


def test_sealed_hash_detects_change_and_removal(tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "evaluate.py").write_text("x = 1\n")
    (tmp_path / "h" / "data.bin").write_bytes(b"\0\1")
    paths = sealed_paths(tmp_path, ["h/*.py", "h/data.*"])
    assert [p.name for p in paths] == ["data.bin", "evaluate.py"]
    hashes = hash_files(paths)
    check_sealed(hashes)
    (tmp_path / "h" / "evaluate.py").write_text("x = 2\n")
    with pytest.raises(SealedFileChanged, match="sealed file changed: .*evaluate.py"):
        check_sealed(hashes)
    (tmp_path / "h" / "data.bin").unlink()
    with pytest.raises(SealedFileChanged, match="sealed file missing: .*data.bin"):
        check_sealed(hashes)


def test_surface_violations():
    parent = {"recipe.py": b"a", "config.yaml": b"b", "notes.txt": b"c"}
    assert surface_violations(parent, {**parent, "config.yaml": b"x"}, ["config.yaml"]) == []
    assert surface_violations(parent, {**parent, "notes.txt": b"x"}, ["config.yaml"]) == ["notes.txt"]
    assert surface_violations(parent, {**parent, "new.py": b"x"}, ["config.yaml"]) == ["new.py"]
