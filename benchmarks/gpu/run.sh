#!/usr/bin/env bash
# The evolve GPU check, one shot, on the device machine: `bash .device/run.sh` from the checkout's
# root, with .device/ made by ../shared/gpu/prepare.sh (see its README.md). The project is the
# folder above this script's. Writes to $OUT: log.txt (everything printed), results.json (one
# entry per step, rewritten after each step), gpu_util.csv (nvidia-smi once a second) and
# logs.tar.gz (step outputs, rank, zygote and Ray logs; 12 MiB at most). Every step runs in its
# own process under `timeout`; a failing step is recorded and the next one runs. Steps stop
# starting after BUDGET_S seconds (370 on the GPU), so the whole run ends within about 6.5 minutes.
#
#   CPU_DRYRUN=1   the training steps on the CPU with tiny budgets (plumbing only; budget 1800 s)
#   PY=...         the interpreter (default python3)
#   SKIP_INSTALL=1 no wheels: PY already has the project's dependencies (e.g. PY=.venv/bin/python)
#   WHL_DIR=...    the wheels (default .device/whl); SITE=... where they go (default /tmp/evolve-gpu-site)
#   SEED_TOKENS, SANDBOX_TOKENS, RL_TOKENS, TP_STEPS, TP_BATCH: budgets (see checks.py)
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT="${GPUCHECK_PROJECT:-$(cd "$HERE/.." && pwd)}"
OUT="${OUT:-${TMPDIR:-/tmp}/evolve-gpu-out}"
mkdir -p "$OUT"
PY="${PY:-python3}"
WHL="${WHL_DIR:-$HERE/whl}"
SITE="${SITE:-/tmp/evolve-gpu-site}"
export GPUCHECK_WORK="${GPUCHECK_WORK:-/tmp/evolve-gpucheck}" GPUCHECK_PROJECT="$PROJECT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
DRY="${CPU_DRYRUN:-0}"
SCALE=1  # the CPU dry-run's steps get longer time-outs
if [[ "$DRY" == 1 ]]; then SCALE="${TIMEOUT_SCALE:-4}"; BUDGET_S="${BUDGET_S:-1800}"; fi
BUDGET_S="${BUDGET_S:-370}"
RUN_DIR="${RUN_DIR:-/tmp/evolve-gpucheck-run}"
GPUCHECK_RAY=/tmp/evolve-gpucheck-ray  # evolve_run's Ray keeps its sessions here (RAY_TMPDIR), and is stopped by it
export PY WHL SITE HERE PROJECT RUN_DIR GPUCHECK_RAY
T0=$(date +%s)
W="$GPUCHECK_WORK/steps"
rm -rf "$GPUCHECK_WORK" "$RUN_DIR" "$GPUCHECK_RAY"
mkdir -p "$W"
rm -f "$OUT/log.txt" "$OUT/results.json" "$OUT/gpu_util.csv" "$OUT/logs.tar.gz"
: > "$OUT/log.txt"
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE_PID=$!

el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[t=$(el)s $(date +%T)] $*"; }

merge() {  # $W/*.json -> $OUT/results.json, in step order
  "$PY" - "$W" "$OUT/results.json" <<'EOF' || say "results.json not written (see the log)"
import json, sys
from pathlib import Path
w, out = Path(sys.argv[1]), Path(sys.argv[2])
res = {}
for p in sorted(w.glob("*.json"), key=lambda p: p.stat().st_mtime):
    try:
        res[p.stem] = json.loads(p.read_text())
    except ValueError as e:
        res[p.stem] = {"error": f"unreadable result: {e}"}
out.write_text(json.dumps(res, indent=1, default=str))
EOF
}

note() {  # note NAME JSON-FIELDS: a step's result written from the shell (skips, time-outs)
  printf '{"step": "%s", %s}\n' "$1" "$2" > "$W/$1.json"
}

json_lines() {  # the last N lines of a file as a JSON list
  "$PY" -c 'import json,sys; print(json.dumps(open(sys.argv[1], errors="replace").read().splitlines()[-int(sys.argv[2]):]))' "$1" "$2" 2>/dev/null || echo '[]'
}

# step NAME LIMIT_S CMD...: runs CMD under timeout, its output to the log and $W/NAME.out; a CMD that
# writes $W/NAME.json itself (checks.py) keeps it, with rc and seconds added; otherwise one is written
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - $(el) ))
  if (( left < 25 )); then
    say "=== [$name] SKIPPED: ${left}s of the run's ${BUDGET_S}s left"
    note "$name" "\"skipped\": \"not started: ${left}s of the run's ${BUDGET_S}s budget left\""
    merge; return 0
  fi
  limit=$(( limit * SCALE ))
  (( limit > left )) && limit=$left
  export GPUCHECK_DUMP_S=$(( limit > 30 ? limit - 10 : 0 ))
  say "=== [$name] start (timeout ${limit}s)"
  local t=$(date +%s)
  if declare -F "$1" >/dev/null; then  # a shell function: timeout runs it in a bash of its own
    local fn=$1; shift
    timeout -k 10 "$limit" bash -c "$(declare -f "$fn"); $fn \"\$@\"" "$fn" "$@" 2>&1 | tee "$W/$name.out"
  else
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$W/$name.out"
  fi
  local rc=${PIPESTATUS[0]} secs=$(( $(date +%s) - t ))
  if (( rc == 124 || rc == 137 )); then
    say "=== [$name] TIMED OUT after ${secs}s (limit ${limit}s)"
    note "$name" "\"rc\": $rc, \"seconds\": $secs, \"error\": \"timed out after ${limit}s\", \"output_tail\": $(json_lines "$W/$name.out" 20)"
  elif [[ -s "$W/$name.json" ]]; then
    "$PY" - "$W/$name.json" "$rc" "$secs" <<'EOF'
import json, sys
p = sys.argv[1]; r = json.load(open(p)); r["rc"] = int(sys.argv[2]); r["seconds"] = int(sys.argv[3])
json.dump(r, open(p, "w"), indent=1)
EOF
  else
    local err="null"  # else the exit status and the output's last line
    (( rc != 0 )) && err=$("$PY" -c 'import json, sys
lines = [l for l in open(sys.argv[1], errors="replace").read().splitlines() if l.strip()]
print(json.dumps(f"exit status {sys.argv[2]}" + (f": {lines[-1].strip()[:200]}" if lines else "")))' "$W/$name.out" "$rc" 2>/dev/null ||
      echo "\"exit status $rc\"")
    note "$name" "\"rc\": $rc, \"seconds\": $secs, \"error\": $err, \"output_tail\": $(json_lines "$W/$name.out" 20)"
  fi
  say "=== [$name] done: rc=$rc in ${secs}s"
  merge
}

say "evolve GPU check: project $PROJECT; CPU_DRYRUN=$DRY PY=$PY WHL=$WHL SITE=$SITE budget ${BUDGET_S}s; OUT=$OUT"
say "machine: $(uname -srm); $(nproc) CPUs; $(cd "$PROJECT" && git log -1 --format='commit %h %cI %s' 2>/dev/null || echo 'no git')"
[[ -f "$HERE/manifest.txt" ]] && sed 's/^/  prepared: /' "$HERE/manifest.txt"
if [[ ! -d "$PROJECT/evolve" ]]; then
  say "no evolve package in $PROJECT: run this script as .device/run.sh inside the project's checkout"
  note setup "\"error\": \"no evolve package in $PROJECT\""; merge
  exit 2
fi

# -- 0. wheels -----------------------------------------------------------------------------
install() {
  set -e
  have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  want=$(sed -n 's/^python=//p' "$HERE/manifest.txt" 2>/dev/null || true)
  if [[ -n "$want" && "$want" != "$have" ]]; then
    echo "  On the device machine python3 is 3.12. For a dry run here, use a Python with the project's"
    echo "  dependencies and no wheels: PY=.venv/bin/python SKIP_INSTALL=1 CPU_DRYRUN=1 bash .device/run.sh"
    echo "  (or wheels for this Python: DEVICE_PYTHON=$have bash ../shared/gpu/prepare.sh)"
    echo "install: the wheels in $WHL are for Python $want, but $PY is Python $have"
    exit 3
  fi
  ls "$WHL"/*.whl >/dev/null 2>&1 || { echo "install: no wheels in $WHL: run prepare.sh first"; exit 3; }
  rm -rf "$SITE"; mkdir -p "$SITE"
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl
  else  # no pip: a wheel is a zip of the files to install
    echo "install: $PY has no pip; unzipping the wheels"
    "$PY" - "$SITE" "$WHL"/*.whl <<'EOF'
import shutil, sys, zipfile
from pathlib import Path
site = Path(sys.argv[1])
for whl in sys.argv[2:]:
    zipfile.ZipFile(whl).extractall(site)
for data in site.glob("*.data"):
    for sub in ("purelib", "platlib"):
        if (data / sub).is_dir():
            shutil.copytree(data / sub, site, dirs_exist_ok=True)
    shutil.rmtree(data)
EOF
  fi
  for t in "$WHL"/ray-*.tar.xz; do  # Ray, unpacked and stripped (its wheel is too big to carry)
    [[ -e $t ]] || continue
    tar -xf "$t" -C "$SITE" || "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$t" "$SITE"
  done
  ls "$SITE"
  du -sh "$SITE"
}
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  step install 120 install
  export PYTHONPATH="$SITE:$PROJECT${PYTHONPATH:+:$PYTHONPATH}"
else
  note install "\"skipped\": \"SKIP_INSTALL=1: $PY's own packages\""; merge
  export PYTHONPATH="$PROJECT${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ "$DRY" == 1 ]]; then  # DeepSpeed's CPU op, built in a folder of this check's own
  export DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/evolve-gpucheck-torch-ext}"
fi

stop_ray() {  # what evolve_run left running, by pid: processes with its RAY_TMPDIR or naming its folder
  "$PY" - "$GPUCHECK_RAY" <<'EOF' || true
import os, signal, sys, time
folder, me = sys.argv[1].encode(), os.getpid()

def ours():
    pids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/environ", "rb") as e, open(f"/proc/{d}/cmdline", "rb") as c:
                env, cmd = e.read().split(b"\0"), c.read()
            if int(d) != me and (b"RAY_TMPDIR=" + folder in env or folder + b"/" in cmd):
                pids.append(int(d))
        except OSError:
            pass
    return pids

for sig in (signal.SIGTERM, signal.SIGKILL):
    pids = ours()
    if not pids:
        break
    print(f"stopping this check's Ray processes ({signal.Signals(sig).name}): {pids}")
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    time.sleep(5)
EOF
}

stop_zygote() {  # a zygote a step could not stop (killed at its time-out) would hold the GPU
  (cd "$PROJECT" && timeout 20 "$PY" -c 'from evolve.warm import zygote; print("zygote left running:", zygote.shutdown())') || true
  sleep 1
}

# -- 1. environment ------------------------------------------------------------------------
SMI_PID=""
ls -la /dev/nvidia* 2>&1 | head -12  # before anything uses CUDA: /dev/nvidia-uvm appears at the first use
if command -v nvidia-smi >/dev/null; then
  nvidia-smi || true
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw,clocks.sm --format=csv -l 1 \
    > "$OUT/gpu_util.csv" 2>/dev/null &
  SMI_PID=$!
else
  say "nvidia-smi: not found"
fi
step env 120 "$PY" "$HERE/checks.py" env "$W/env.json"
HAVE_GPU=$("$PY" -c 'import json,sys; print(int(bool(json.load(open(sys.argv[1]))["cuda_available"])))' "$W/env.json" 2>/dev/null ||
  timeout 60 "$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
say "CUDA available: $HAVE_GPU"

# -- 2. the sandbox probe -----------------------------------------------------------------
sandbox_probe() {
  echo "kernel $(uname -r); max_user_namespaces=$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo '?');" \
       "unprivileged_userns_clone=$(cat /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null || echo n/a); uid $(id -u)"
  cd "$PROJECT" && "$PY" -m evolve.rank.sandbox auto
  cd "$PROJECT" && "$PY" -m evolve.rank.sandbox unprivileged || true
}
step sandbox 40 sandbox_probe
SANDBOX_OK=0
grep -q '"level": "full"\|"level": "unprivileged"' "$W/sandbox.out" && SANDBOX_OK=1
say "sandbox probe: $([[ $SANDBOX_OK == 1 ]] && echo ok || echo FAILED)"

# -- 3.-6. trials through the harness -----------------------------------------------------
if [[ "$DRY" == 1 ]]; then  # setup.sh's step: DeepSpeed's CPU op, built once before the trials
  cpu_op() { cd "$PROJECT" && "$PY" -m evolve.warm.commop; }
  step cpu_op 300 cpu_op
fi
if [[ "$DRY" != 1 && "$HAVE_GPU" != 1 ]]; then
  for s in fork seed_plain seed_sandbox throughput rl; do
    say "=== [$s] SKIPPED: no CUDA GPU (CPU_DRYRUN=1 runs it on the CPU)"
    note "$s" '"skipped": "no CUDA GPU visible to torch (CPU_DRYRUN=1 runs it on the CPU)"'
  done
  merge
else
  # 2b. CUDA in a child forked after the zygote's imports (what every trial's rank is), GPU only
  [[ "$DRY" == 1 ]] || step fork 60 "$PY" "$HERE/checks.py" fork "$W/fork.json"
  step seed_plain 150 "$PY" "$HERE/checks.py" seed_plain "$W/seed_plain.json"
  step seed_sandbox 120 "$PY" "$HERE/checks.py" seed_sandbox "$W/seed_sandbox.json"
  stop_zygote
  RETRY_NVML=0 RETRY_NOCAP=0
  if grep -q '"error"' "$W/seed_sandbox.json" 2>/dev/null && ! grep -q '"project_changed"' "$W/seed_sandbox.json"; then
    # once more, changing what the fork probe and the error point at: torch's NVML-based CUDA check
    # where a forked child cannot use CUDA; no memory cap where the error speaks of memory or fork is fine
    read -r RETRY_NVML RETRY_NOCAP < <("$PY" - "$W/fork.json" "$W/seed_sandbox.json" <<'EOF'
import json, re, sys
try:
    fork = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    fork = {}
r = json.load(open(sys.argv[2]))
err = " ".join([str(r.get("error", ""))] + [str(x) for x in (r.get("traceback_tail") or []) + (r.get("rank0_log_tail") or [])])
nvml = fork.get("child_cuda_ok") is not True
nocap = bool(re.search(r"memory|alloc|ENOMEM|rlimit", err, re.I)) or fork.get("child_cuda_ok") is True
print(int(nvml), int(nocap))
EOF
    )
    say "seed_sandbox failed; retry with PYTORCH_NVML_BASED_CUDA_CHECK=$RETRY_NVML, memory cap removed=$RETRY_NOCAP"
    retry_env=()
    [[ $RETRY_NVML == 1 ]] && retry_env+=(PYTORCH_NVML_BASED_CUDA_CHECK=1)
    [[ $RETRY_NOCAP == 1 ]] && retry_env+=(SANDBOX_MEMORY_BYTES=0)
    step seed_sandbox_retry 120 env "${retry_env[@]}" "$PY" "$HERE/checks.py" seed_sandbox_retry "$W/seed_sandbox_retry.json"
    stop_zygote
  fi
  step throughput 150 "$PY" "$HERE/checks.py" throughput "$W/throughput.json"
  step rl 100 "$PY" "$HERE/checks.py" rl "$W/rl.json"
fi

# -- 7. a search through the CLI, on Ray ------------------------------------------------------
if ! "$PY" -c 'import ray' 2>/dev/null; then
  note evolve_run '"skipped": "ray does not import (see the env step)"'; merge
elif [[ "$DRY" != 1 && "$HAVE_GPU" != 1 ]]; then
  note evolve_run '"skipped": "no CUDA GPU (CPU_DRYRUN=1 runs it on the CPU)"'; merge
else
  EVOLVE_ARGS="budget.trials=4 confirm.top=0"
  if [[ "$DRY" == 1 ]]; then EVOLVE_ARGS+=" trial.gpus_per_worker=0 budget.train_tokens=20480"
  else EVOLVE_ARGS+=" trial.gpus_per_worker=0.5 budget.concurrent=2"; fi  # two trials share one GPU
  if [[ $SANDBOX_OK != 1 ]]; then EVOLVE_ARGS+=" trial.sandbox=false"
  elif grep -q '"error"' "$W/seed_sandbox.json" 2>/dev/null; then  # the sandboxed trial failed on this GPU
    if [[ -s "$W/seed_sandbox_retry.json" ]] && ! grep -q '"error"' "$W/seed_sandbox_retry.json"; then
      [[ ${RETRY_NOCAP:-0} == 1 ]] && EVOLVE_ARGS+=" trial.memory_gb=0"
      [[ ${RETRY_NVML:-0} == 1 ]] && EVOLVE_RUN_NVML="${EVOLVE_RUN_NVML:-1}"
    else
      EVOLVE_ARGS+=" trial.sandbox=false"
    fi
    say "evolve run: the sandboxed seed trial failed here, so the run changes: $EVOLVE_ARGS (NVML ${EVOLVE_RUN_NVML:-auto})"
  fi
  export EVOLVE_ARGS
  # EVOLVE_RUN_NVML=auto: torch's NVML-based CUDA check only where the fork probe showed that the
  # zygote's children need it and that it is enough (the run then says so); 1 always; 0 never
  NVML="${EVOLVE_RUN_NVML:-auto}"
  if [[ "$NVML" == auto ]]; then
    NVML=$("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(int(r.get("child_cuda_ok") is False and r.get("child_cuda_ok_with_nvml_check") is True))' "$W/fork.json" 2>/dev/null || echo 0)
  fi
  if [[ "$NVML" == 1 ]]; then
    export PYTORCH_NVML_BASED_CUDA_CHECK=1
    say "evolve run: with PYTORCH_NVML_BASED_CUDA_CHECK=1 (a workaround, not the project's default)"
  fi
  evolve_run() {  # the project's CLI, as a user runs it
    echo "evolve run experiments/tiny_lm $EVOLVE_ARGS --run-dir $RUN_DIR"
    # the overrides go before --run-dir: argparse takes no positional overrides after the option
    cd "$PROJECT" && RAY_TMPDIR="$GPUCHECK_RAY" "$PY" -m evolve.cli run experiments/tiny_lm $EVOLVE_ARGS --run-dir "$RUN_DIR"
    local rc=$?
    echo "evolve run: exit status $rc"
    "$PY" -m evolve.cli status "$RUN_DIR" || true
    return $rc
  }
  step evolve_run 300 evolve_run
  step population 30 "$PY" "$HERE/checks.py" population "$W/population.json"
  stop_ray
  stop_zygote
fi

[[ -n "$SMI_PID" ]] && kill "$SMI_PID" 2>/dev/null
merge
say "=== summary"
"$PY" - "$OUT/results.json" <<'EOF' || true
import json, sys
res = json.load(open(sys.argv[1]))
for name, r in res.items():
    if r.get("skipped"):
        state = "SKIPPED " + str(r["skipped"])
    elif r.get("error"):
        state = ("FAILED (the check needs updating for the project's code) " if r.get("project_changed")
                 else "FAILED ") + str(r["error"])[:300]
    else:
        state = "ok"
    keys = ("tokens_per_s", "step_ms", "heldout_loss", "heldout_accuracy", "train_wall_s", "wall_s",
            "deepspeed_over_plain_fp32", "bf16_autocast_over_harness", "completed", "n", "child_cuda_ok",
            "child_cuda_ok_with_nvml_check", "PYTORCH_NVML_BASED_CUDA_CHECK")
    extra = ", ".join(f"{k}={r[k]}" for k in keys if r.get(k) is not None)
    print(f"{name:18s} rc={r.get('rc', '-')} {r.get('seconds', '-')}s {state}{'; ' + extra if extra else ''}")
    for loop, v in (r.get("loops") or {}).items():
        print(f"{'':18s} {loop}: {v}")
EOF
# what a failure needs for its diagnosis, in one file of at most 12 MiB (before compression)
"$PY" - "$OUT/logs.tar.gz" "$T0" "$W/*" "$GPUCHECK_WORK/*/trials/*/*.log" "$RUN_DIR/trials/*/*.log" \
  "$RUN_DIR/tune/**/error.txt" "/tmp/evolve-$(id -u)/*.log" "$GPUCHECK_RAY/ray/session_latest/logs/*.err" \
  "$GPUCHECK_RAY/ray/session_latest/logs/*.out" "$GPUCHECK_RAY/ray/session_latest/logs/*.log" <<'EOF' || say "logs.tar.gz not written"
import glob, io, os, sys, tarfile
out, since, patterns = sys.argv[1], int(sys.argv[2]) - 5, sys.argv[3:]
cap, per_file, total, n = 12 << 20, 1 << 20, 0, 0
with tarfile.open(out, "w:gz") as t:
    for f in dict.fromkeys(f for p in patterns for f in sorted(glob.glob(p, recursive=True))):
        if not os.path.isfile(f) or os.path.getsize(f) == 0 or os.path.getmtime(f) < since:  # this run's only
            continue
        with open(f, "rb") as fh:
            data = fh.read()
        if len(data) > per_file:  # its start and its end
            data = data[:per_file // 4] + b"\n[... cut ...]\n" + data[-(3 * per_file // 4):]
        if total + len(data) > cap:
            break
        info = tarfile.TarInfo(f.lstrip("/"))
        info.size, info.mtime = len(data), int(os.path.getmtime(f))
        t.addfile(info, io.BytesIO(data))
        total, n = total + len(data), n + 1
print(f"logs.tar.gz: {n} files, {total >> 10} KiB before compression")
EOF
say "done; results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null || sleep 1
