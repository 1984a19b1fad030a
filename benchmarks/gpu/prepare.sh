#!/usr/bin/env bash
# Makes .device/ in the project's checkout for the GPU check: run.sh and checks.py from beside this
# script, and in .device/whl/ the packages the device machine lacks, for its Python (3.12), built
# from the package registry (the device machine reaches none). From the checkout's root:
#
#   bash benchmarks/gpu/prepare.sh     (or: bash benchmarks/gpu_check.sh, which also runs it here)
#
# Needs python3 and pip; uses the checkout's .venv (setup.sh) when there is one: its versions of
# DeepSpeed, Ray and the rest, and its torch to build DeepSpeed. Without one, the newest versions
# that pyproject.toml allows. Idempotent: what is already built for the same versions is kept.
#
#   DEVICE_PYTHON=3.12        the device machine's Python (the wheels' tag)
#   DS_VERSION=, RAY_VERSION= these versions instead of the .venv's or the newest allowed
#   BUILD_PY=                 the Python that builds DeepSpeed (default: .venv's, if it has torch)
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
DEV="$ROOT/.device"
WHL="$DEV/whl"
PYV="${DEVICE_PYTHON:-3.12}"
TAG="cp${PYV/./}"
HOSTPY="${HOSTPY:-python3}"
VPY="$ROOT/.venv/bin/python"
[[ -x "$VPY" ]] || VPY=""
LIMIT=$(( 64 << 20 ))  # what may travel to the device machine: the checkout and .device together
# Packages the device machine has (its image's list): never carried, they would shadow its own
DEVICE_HAS="numpy packaging protobuf attrs six setuptools certifi idna urllib3 requests charset-normalizer
 pyyaml filelock fsspec msgpack click psutil tqdm torch triton jinja2 markupsafe sympy mpmath networkx"
# What DeepSpeed and Ray (tune, train) import that the device machine lacks
EXTRA="pydantic hjson jsonschema tensorboardx pyseccomp"
PLAT=(--only-binary=:all: --python-version "$PYV" --implementation cp --abi "$TAG"
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
      --platform manylinux_2_34_x86_64)

say() { echo "prepare: $*"; }
pip_() {  # PY ARGS...: pip, less its warnings about index folders that this machine's pip.conf names
  local py=$1; shift
  "$py" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
  return "${PIPESTATUS[0]}"
}
die() { echo "prepare: error: $*" >&2; exit 1; }
[[ -f "$ROOT/pyproject.toml" && -d "$ROOT/evolve" ]] ||
  die "$ROOT is not the evolve project's checkout (no pyproject.toml and evolve/); run this from its root"
"$HOSTPY" -m pip --version >/dev/null 2>&1 || die "$HOSTPY has no pip"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$WHL"

# -- the scripts (a copy edited in .device/ is kept), and .device/ kept out of git ---------------
sha() { "$HOSTPY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"; }
for f in run.sh checks.py; do
  if [[ -f "$DEV/$f" && -f "$DEV/.$f.sha256" && "$(sha "$DEV/$f")" != "$(cat "$DEV/.$f.sha256")" ]]; then
    cmp -s "$SRC/$f" "$DEV/$f" ||
      say "kept .device/$f: edited here, and unlike $SRC/$f (delete it to take that one)"
    continue
  fi
  cp "$SRC/$f" "$DEV/$f"
  sha "$DEV/$f" > "$DEV/.$f.sha256"
done
if EXCL="$(cd "$ROOT" && git rev-parse --git-path info/exclude 2>/dev/null)"; then
  [[ "$EXCL" = /* ]] || EXCL="$ROOT/$EXCL"
  mkdir -p "$(dirname "$EXCL")"
  grep -qxF '/.device/' "$EXCL" 2>/dev/null || { echo '/.device/' >> "$EXCL"; say "added /.device/ to $EXCL"; }
fi

# -- versions --------------------------------------------------------------------------------
venv_version() {  # NAME: its version in the checkout's .venv, or nothing
  [[ -n "$VPY" ]] && "$VPY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || true
}
spec_of() {  # NAME: its requirement in pyproject.toml without extras, e.g. "ray>=2.50,<3"
  "$HOSTPY" - "$ROOT/pyproject.toml" "$1" <<'EOF'
import re, sys
text, name = open(sys.argv[1]).read(), sys.argv[2]
m = re.search(r'"\s*' + re.escape(name) + r'\s*(\[[^\]]*\])?\s*([<>=!~][^";]*)?\s*[";]', text, re.I)
print(name + (m.group(2) or "").strip() if m else name)
EOF
}
resolve() {  # REPORT ARGS...: pip's choice for the device machine's Python, as JSON, without installing
  pip_ "$HOSTPY" install -q --dry-run --ignore-installed --target "$TMP/none" "${PLAT[@]}" --report "$1" "${@:2}"
}
if [[ -n "$VPY" ]]; then  # the .venv's versions of everything, as constraints for what is resolved
  "$VPY" -c 'import importlib.metadata as m
for d in m.distributions():
    n = d.metadata["Name"]
    if n and n.lower() not in ("evolve", "torch", "pip", "setuptools", "wheel"): print(f"{n}=={d.version}")' > "$TMP/venv-pins.txt"
  PINS=(-c "$TMP/venv-pins.txt")
  say "versions from $VPY"
else
  PINS=()
  say "no .venv in $ROOT: the newest versions pyproject.toml allows (bash setup.sh makes one)"
fi
DS_V="${DS_VERSION:-$(venv_version deepspeed)}"
RAY_V="${RAY_VERSION:-$(venv_version ray)}"
if [[ -z "$RAY_V" ]]; then
  resolve "$TMP/ray.json" --no-deps "$(spec_of ray)"
  RAY_V=$("$HOSTPY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["install"][0]["metadata"]["version"])' "$TMP/ray.json")
fi
if [[ -z "$DS_V" ]]; then  # DeepSpeed ships only its source: the newest allowed, as pip picks it
  pip_ "$HOSTPY" download -q --no-deps --no-binary deepspeed -d "$TMP/dsv" "$(spec_of deepspeed)"
  DS_V=$(cd "$TMP/dsv" && ls deepspeed-*.tar.gz | sed 's/^deepspeed-//; s/\.tar\.gz$//')
fi
say "device Python $PYV ($TAG); deepspeed $DS_V; ray $RAY_V"
WANT=("deepspeed-$DS_V-py3-none-any.whl" "ray-$RAY_V-$TAG-stripped.tar.xz")

# -- pydantic, hjson, jsonschema, tensorboardX and what they need that the device lacks ---------------
resolve "$TMP/extra.json" "${PINS[@]}" $EXTRA
"$HOSTPY" - "$TMP/extra.json" "$DEVICE_HAS" > "$TMP/extra.txt" <<'EOF'
import json, re, sys, urllib.parse
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
has = {norm(n) for n in sys.argv[2].split()}
for item in json.load(open(sys.argv[1]))["install"]:
    name = item["metadata"]["name"]
    if norm(name) not in has:
        url = item["download_info"]["url"]
        print(f"{name}=={item['metadata']['version']} {urllib.parse.unquote(url.rsplit('/', 1)[-1].split('#')[0])}")
EOF
while read -r req file; do
  WANT+=("$file")
  if [[ -f "$WHL/$file" ]]; then say "have $file"; continue; fi
  pip_ "$HOSTPY" download -q --no-deps "${PLAT[@]}" -d "$WHL" "$req"
  [[ -f "$WHL/$file" ]] || die "pip download $req did not give $file"
  say "downloaded $file"
done < "$TMP/extra.txt"

# -- DeepSpeed: a pure-Python wheel, no op compiled (DS_BUILD_OPS=0); ops build on first use ------------
DS_WHL="$WHL/deepspeed-$DS_V-py3-none-any.whl"
if [[ -f "$DS_WHL" ]]; then
  say "have $(basename "$DS_WHL")"
else
  BPY="${BUILD_PY:-}"
  for p in "$VPY" "$HOSTPY"; do
    [[ -z "$BPY" && -n "$p" ]] && "$p" -c 'import torch' 2>/dev/null && BPY="$p"
  done
  if [[ -n "$BPY" ]]; then  # torch importable: DeepSpeed records its version, as a normal install does
    "$BPY" -c 'import setuptools, wheel' 2>/dev/null ||
      pip_ "$HOSTPY" install -q --target "$TMP/buildtools" setuptools wheel
    say "building deepspeed $DS_V with $BPY (torch importable)"
    PYTHONPATH="$TMP/buildtools${PYTHONPATH:+:$PYTHONPATH}" DS_BUILD_OPS=0 \
      pip_ "$BPY" wheel -q --no-cache-dir --no-deps --no-build-isolation --no-binary deepspeed -w "$TMP/ds" "deepspeed==$DS_V"
  else
    say "building deepspeed $DS_V without torch (no .venv with torch; its ops build on first use all the same)"
    DS_BUILD_OPS=0 pip_ "$HOSTPY" wheel -q --no-cache-dir --no-deps --no-binary deepspeed -w "$TMP/ds" "deepspeed==$DS_V"
  fi
  f=$(ls "$TMP"/ds/deepspeed-*.whl 2>/dev/null | head -1)
  [[ -n "$f" ]] || die "the deepspeed build made no wheel"
  case "$f" in *-py3-none-any.whl) ;; *) die "the deepspeed wheel is not pure Python: $(basename "$f")";; esac
  mv "$f" "$DS_WHL"
  say "built $(basename "$DS_WHL")"
fi

# -- Ray: its wheel (about 76 MB) without rllib, serve, llm, the dashboard's web client and the jars,
# its binaries stripped of symbols, as tar.xz (about 18 MB) -------------------------------------------------
RAY_TAR="$WHL/ray-$RAY_V-$TAG-stripped.tar.xz"
if [[ -f "$RAY_TAR" ]]; then
  say "have $(basename "$RAY_TAR")"
else
  pip_ "$HOSTPY" download -q --no-deps "${PLAT[@]}" -d "$TMP/ray" "ray==$RAY_V"
  f=$(ls "$TMP"/ray/ray-*.whl | head -1)
  say "stripping $(basename "$f") ($(du -h "$f" | cut -f1)); xz -9e takes about two minutes"
  "$HOSTPY" - "$f" "$RAY_TAR" <<'EOF'
import lzma, os, shutil, subprocess, sys, tarfile, tempfile, zipfile
whl, out = sys.argv[1], sys.argv[2]
DROP = ("ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/build/", "ray/jars/")
strip = shutil.which("strip")
with tempfile.TemporaryDirectory() as d:
    elfs = []
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.is_dir() or info.filename.startswith(DROP):
                continue
            path = z.extract(info, d)
            os.chmod(path, (info.external_attr >> 16) & 0o777 or 0o644)
            with open(path, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    elfs.append(path)
    if strip:  # debug symbols only: --strip-unneeded keeps what loading needs
        subprocess.run([strip, "--strip-unneeded", *elfs], check=True)
    else:
        print("prepare: no strip (binutils): Ray's binaries keep their symbols (about 8 MB more)")

    def owner(ti):
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    with tarfile.open(out + ".tmp", "w:xz", preset=9 | lzma.PRESET_EXTREME) as t:
        for top in sorted(os.listdir(d)):
            t.add(os.path.join(d, top), arcname=top, filter=owner)
os.replace(out + ".tmp", out)
EOF
  say "made $(basename "$RAY_TAR")"
fi

# -- what else is in whl/ (another version, another Python) goes ----------------------------------------
for f in "$WHL"/*; do
  keep=0
  for w in "${WANT[@]}"; do [[ "$(basename "$f")" == "$w" ]] && keep=1; done
  (( keep )) || { rm -f "$f"; say "removed $(basename "$f") (not wanted now)"; }
done
{
  echo "python=$PYV"
  echo "deepspeed=$DS_V"
  echo "ray=$RAY_V"
  echo "versions_from=${VPY:-PyPI (newest allowed by pyproject.toml)}"
  echo "prepared=$(date -u +%FT%TZ) from $(cd "$ROOT" && git log -1 --format=%h 2>/dev/null || echo '?')"
  (cd "$WHL" && ls)
} > "$DEV/manifest.txt"

# -- sizes --------------------------------------------------------------------------------------------
dev_b=$(du -sb "$DEV" | cut -f1)
tree_b=$(cd "$ROOT" && git ls-files -z -c -o --exclude-standard 2>/dev/null | xargs -0 -r du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
say "$DEV: $(( dev_b >> 10 )) KiB in $(ls "$WHL" | wc -l) packages; with the checkout's other files $(( (dev_b + tree_b) >> 10 )) KiB of the $(( LIMIT >> 10 )) KiB that may travel"
(( dev_b + tree_b <= LIMIT )) || die "over the size that may travel to the device machine"
say "ready: on the device machine run  bash .device/run.sh  with carry [\".device\"]"
