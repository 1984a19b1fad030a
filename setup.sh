#!/usr/bin/env bash
# Creates .venv/ with evolve, its test tools and a CPU build of torch.
# torch is pinned in constraints.txt (not in pyproject.toml) so the package
# keeps a range and pip takes the 2.13.0 CPU wheel instead of a CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
# the sandbox's system-call filter needs the system's libseccomp (in every Debian and Ubuntu image)
ldconfig -p 2>/dev/null | grep 'libseccomp\.so\.2' >/dev/null \
  || echo "setup.sh: libseccomp is missing: install it (apt-get install libseccomp2) or run with trial.sandbox=off"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
# DeepSpeed compiles its CPU communication op on first use (about a minute
# on 2 cores); build it now so no trial pays for it.
DS_ACCELERATOR=cpu .venv/bin/python -m evolve.warm.commop
# the report's browser test screenshots the page with Debian's chromium (nothing downloads a browser at run time)
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup.sh: chromium is missing: install it as root (apt-get install chromium) for tests/test_report_browser.py"
  fi
fi
