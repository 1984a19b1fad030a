"""Run folders in cloud storage: `s3://`, `gs://` (any pyarrow file system URI).

A search whose run folder is a URI works in a local copy of it and keeps
the URI up to date through a `Mirror`:

- every durable write (`store.atomic_write`: results, variants, file
  versions, audit rows, proposals, the notebook, confirmations, the
  searcher's state) is uploaded before the write returns, so what a process
  counts as recorded is in the bucket too, and in the same order;
- a sweeper thread uploads what other processes write (Ray Tune's
  experiment state and checkpoints, results kept by trials, the data
  splits) every `interval_s`, and once more when the search ends;
- files the store merges away (compacted result parts) are deleted from
  the bucket only after the merged file is there.

An upload is one PUT, all or nothing: a reader of the bucket never sees
half a file. `pull` brings the bucket's copy down, so `evolve resume URI`
continues the search on another head node. The local copy lives at a path
made from the URI (`$EVOLVE_CACHE`, default `~/.cache/evolve`, then the
scheme, bucket and key), so the absolute paths that Tune's state holds are
the same on every head node with the same home folder.

Credentials and endpoints come from the environment as pyarrow reads them
(`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...), or from the URI's query
(`s3://bucket/key?endpoint_override=host:port&scheme=http`).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

# pyarrow's file systems are imported only when a run folder is in cloud storage.

# scratch of a node, made again when needed: never uploaded
LOCAL_ONLY = ("work", "trials", "train")

_mirrors: dict[Path, Mirror] = {}
_lock = threading.Lock()


def is_uri(path: str | os.PathLike) -> bool:
    """True for `scheme://...` (s3, gs, hdfs, ...), false for a local path or `file://`."""
    scheme = urlsplit(str(path)).scheme
    return len(scheme) > 1 and scheme != "file"


def local_copy(uri: str) -> Path:
    """The local folder that holds the run at `uri` while a process works on it."""
    parts = urlsplit(uri)
    root = Path(os.environ.get("EVOLVE_CACHE") or Path.home() / ".cache" / "evolve")
    return root / parts.scheme / parts.netloc / parts.path.strip("/")


def _filesystem(uri: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"storage: cannot open {uri!r}: {' '.join(str(e).split())}") from None


def _rel(root: Path, path: Path) -> str | None:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def wanted(rel: str) -> bool:
    """Whether a file at `rel` (relative to the run folder) belongs in the bucket."""
    parts = rel.split("/")
    return parts[0] not in LOCAL_ONLY and not (parts[-1].startswith(".") and parts[-1].endswith(".tmp"))


class Mirror:
    """Keeps the run folder `local` and its copy at `uri` the same, local to remote."""

    def __init__(self, local: str | os.PathLike, uri: str, interval_s: float = 10.0):
        self.local = Path(local).resolve()
        self.uri = uri
        self.fs, self.base = _filesystem(uri)
        self.interval_s = interval_s
        self._sent: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) last uploaded
        self._lock = threading.Lock()
        # one upload or delete at a time: a file's last PUT is of its newest content, and a
        # sweep never puts back a part that compaction removed
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    # -- remote ------------------------------------------------------------------------------
    def _remote(self, rel: str) -> str:
        return f"{self.base.rstrip('/')}/{rel}"

    def remote_files(self) -> dict[str, int]:
        """Every file under the URI: relative path -> size."""
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(pafs.FileSelector(self.base, recursive=True, allow_not_found=True))
        n = len(self.base.rstrip("/")) + 1
        return {i.path[n:]: i.size for i in info if i.type == pafs.FileType.File}

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._remote(rel)).type == pafs.FileType.File

    # -- local to remote ---------------------------------------------------------------------
    def upload(self, path: Path) -> bool:
        """Uploads one file of the run folder if it changed since its last upload; True if it did."""
        rel = _rel(self.local, path)
        if rel is None or not wanted(rel):
            return False
        with self._io:
            try:
                st = path.stat()
                stamp = (st.st_size, st.st_mtime_ns)
                if self._sent.get(rel) == stamp:
                    return False
                data = path.read_bytes()
            except FileNotFoundError:  # replaced or removed since it was listed
                return False
            with self.fs.open_output_stream(self._remote(rel)) as out:
                out.write(data)
            with self._lock:
                self._sent[rel] = stamp
        return True

    def delete(self, path: Path) -> None:
        """Removes a file the run folder no longer has (a merged result part) from the bucket."""
        rel = _rel(self.local, path)
        if rel is None or not wanted(rel):
            return
        with self._io:
            try:
                self.fs.delete_file(self._remote(rel))
            except FileNotFoundError:
                pass
            with self._lock:
                self._sent.pop(rel, None)

    def push(self) -> int:
        """Uploads every file that changed since its last upload; returns how many.

        Tune's experiment state goes last: a bucket that holds it holds the
        rest of that sweep too (`tuner.pkl`, the searcher's state, the trials'
        folders), so a head lost mid-sweep leaves a state a resume can use.
        """
        paths = []
        for dirpath, dirnames, filenames in os.walk(self.local):
            if Path(dirpath) == self.local:
                dirnames[:] = [d for d in dirnames if d not in LOCAL_ONLY]
            paths += [Path(dirpath) / name for name in filenames]
        paths.sort(key=lambda p: p.name.startswith("experiment_state"))  # stable: the walk's order otherwise
        return sum(self.upload(p) for p in paths)

    # -- remote to local ---------------------------------------------------------------------
    def pull(self, threads: int = 8) -> int:
        """Downloads every remote file the local folder lacks or holds at another size; returns how many.

        Files come down `threads` at a time: a run is many small files, and
        each is a round trip.
        """

        todo = [rel for rel, size in sorted(self.remote_files().items()) if wanted(rel)
                and not ((self.local / rel).is_file() and (self.local / rel).stat().st_size == size)]

        def fetch(rel: str) -> None:
            with self.fs.open_input_stream(self._remote(rel)) as src:
                data = src.read()
            target = self.local / rel
            write_local(target, data, durable=False)
            st = target.stat()
            with self._lock:
                self._sent[rel] = (st.st_size, st.st_mtime_ns)  # the bucket has it already

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(fetch, todo))
        return len(todo)

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> Mirror:
        """Registers the mirror for atomic writes under `local` and starts the sweeper."""
        self.local.mkdir(parents=True, exist_ok=True)
        with _lock:
            _mirrors[self.local] = self
        self._thread = threading.Thread(target=self._sweep, name="evolve-mirror", daemon=True)
        self._thread.start()
        return self

    def _sweep(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.push()
            except OSError as e:  # the bucket is unreachable for now: the next sweep tries again
                self.errors.append(" ".join(str(e).split())[:200])
                if len(self.errors) == 1:
                    print(f"evolve: warning: storage: uploading to {self.uri} failed ({self.errors[0]}); "
                          f"trying again every {self.interval_s:g} s", file=sys.stderr)

    def stop(self) -> int:
        """Stops the sweeper, uploads what is left, unregisters; returns how many files went up last."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            return self.push()
        finally:
            with _lock:
                _mirrors.pop(self.local, None)


def mirror_for(path: Path) -> Mirror | None:
    """The started mirror whose run folder holds `path`, if any."""
    if not _mirrors:
        return None
    path = path.resolve()
    with _lock:
        for root, m in _mirrors.items():
            if path.is_relative_to(root):
                return m
    return None


def write_local(path: Path, data: bytes, durable: bool = True) -> None:
    """Writes `data` to `path` on this machine through a temporary file and a rename.

    `durable` flushes the file to disk before the rename. `store.atomic_write`
    is this plus the upload to the run's mirror.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def written(path: Path) -> None:
    """Called by `store.atomic_write` once `path` is in place: uploads it when a mirror covers it.

    Ray Tune's folder is left to the sweeper, which uploads its experiment
    state and the searcher's state together.
    """
    m = mirror_for(path)
    if m is not None and not (_rel(m.local, path) or "").startswith("tune/"):
        m.upload(path)


def sync(run_dir: Path) -> int:
    """Uploads now whatever changed in `run_dir` when a mirror covers it (the data splits, before any trial)."""
    m = mirror_for(Path(run_dir))
    return m.push() if m is not None else 0


def removed(path: Path) -> None:
    m = mirror_for(path)
    if m is not None:
        m.delete(path)


def open_run(run_dir: str | os.PathLike) -> tuple[Path, Mirror | None]:
    """Returns the local folder for `run_dir` and, for a URI, its mirror (not started), the bucket pulled first."""
    if not is_uri(run_dir):
        return Path(run_dir), None
    uri = str(run_dir).rstrip("/")
    mirror = Mirror(local_copy(uri), uri)
    t = time.time()
    n = mirror.pull()
    if n:
        print(f"evolve: fetched {n} files of {uri} into {mirror.local} in {time.time() - t:.1f} s")
    return mirror.local, mirror


@contextmanager
def session(run_dir: str | os.PathLike, fresh: bool = False):
    """Yields the local folder to work in; for a URI, pulled first and mirrored until the block ends.

    `fresh` (a new search): a local copy left from a run the bucket no
    longer holds is cleared first.
    """
    if not is_uri(run_dir):
        yield Path(run_dir)
        return
    uri = str(run_dir).rstrip("/")
    if fresh and not Mirror(local_copy(uri), uri).remote_files():
        shutil.rmtree(local_copy(uri), ignore_errors=True)
    local, mirror = open_run(uri)
    mirror.start()
    try:
        yield local
    finally:
        mirror.stop()
