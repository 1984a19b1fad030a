"""`ray up`, `ray submit` and `ray down` end to end, on a cluster made of this one machine.

The set-up installs OpenSSH (if missing) and starts an SSH server that
listens only on 127.0.0.1, with a host key and a client key it generates.
It logs in as a user made for the test: root's uid with a home folder of
its own in the test's temporary folder, so the cluster launcher's files
(the project under ~/evolve, ~/ray_bootstrap_config.yaml) land there and
nothing is written to root's home. The cluster config is
cluster/onprem.yaml with this host as its head and no workers.

`ray down` runs `ray stop` on the head, which stops every Ray process on
it: on this machine, the test's own cluster (the suite runs one test at a
time, each closing its own Ray first).
"""

import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from evolve.read.population import load_population
from tests.conftest import wait_for_port

pytestmark = pytest.mark.search
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # the tests' own environment (.venv/bin)
NEEDED = {"/usr/sbin/sshd": "openssh-server", "/usr/bin/rsync": "rsync", "/usr/bin/nc": "netcat-openbsd"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd[:3]} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory):
    missing = sorted({pkg for path, pkg in NEEDED.items() if not os.path.exists(path)})
    if missing:
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", *missing], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    d = tmp_path_factory.mktemp("ssh")
    home = d / "home"
    home.mkdir()
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")])
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id_ed25519")])
    shutil.copy(d / "id_ed25519.pub", d / "authorized_keys")
    user = f"evolve{uuid.uuid4().hex[:8]}"
    run(["useradd", "--non-unique", "--uid", "0", "--gid", "0", "--no-create-home", "--home-dir", str(home),
         "--shell", "/bin/bash", "--password", "*", user])  # "*": no password, and not locked
    # the head's commands find the tests' environment first; Ray on it stays on loopback
    # (and DeepSpeed's CPU op, which setup.sh built, from where it was built)
    ops = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    (home / ".bashrc").write_text(f'export PATH="{VENV_BIN}:$PATH"\nexport RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0\n'
                                  f'export TORCH_EXTENSIONS_DIR="{ops}"\n')
    (home / ".profile").write_text(". ~/.bashrc\n")
    port = free_port()
    config = d / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
                      f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
                      f"AllowUsers {user}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                      "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation
    log = open(d / "sshd.log", "wb")
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, sshd, d / "sshd.log", wait_s=30)
        yield {"user": user, "key": str(d / "id_ed25519"), "port": port, "home": home}
    finally:
        sshd.kill()
        sshd.wait()
        subprocess.run(["pkill", "-KILL", "-f", f"^sshd: {user}"], capture_output=True)  # its sessions
        # its uid is root's, always "in use": hence --force
        subprocess.run(["userdel", "--force", user], capture_output=True, check=True)


def test_ray_up_submit_and_down_run_a_search_on_the_cluster(ssh_host, tmp_path):
    config = yaml.safe_load((ROOT / "cluster" / "onprem.yaml").read_text())
    name = f"evolve-test-{uuid.uuid4().hex[:6]}"
    config["cluster_name"] = name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["max_workers"] = 0
    config["auth"] = {"ssh_user": ssh_host["user"], "ssh_private_key": ssh_host["key"],
                      "ssh_proxy_command": f"nc 127.0.0.1 {ssh_host['port']}"}
    # setup.sh would build ~/evolve/.venv as on any new host; here the tests' environment is already built
    config["setup_commands"] = [f"ln -sfn {VENV_BIN.parent} ~/evolve/.venv"]
    gcs = free_port()
    # No autoscaler on this head (no workers to scale): Ray's local node provider rewrites the cluster's
    # state file in place, and `ray down` stopping an autoscaler in mid-write left it empty once
    # (JSONDecodeError in `ray down`'s own read of it).
    config["head_start_ray_commands"] = [
        f"ray start --head --node-ip-address=127.0.0.1 --port={gcs} --num-cpus=2 --include-dashboard=false "
        "--disable-usage-stats"]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    run_dir = tmp_path / "run"
    try:
        run(["ray", "up", "-y", "--no-config-cache", str(path)], cwd=ROOT, env=env, timeout=300)
        assert (ssh_host["home"] / "evolve" / "evolve" / "cli.py").is_file()  # file_mounts put the project there
        out = run(["ray", "submit", str(path), "experiments/launch.py", "--", "experiments/tiny_lm",
                   "budget.trials=1", "budget.concurrent=1", "budget.train_tokens=8192", "trial.report_every=2",
                   "confirm.top=0", "--run-dir", str(run_dir)], cwd=ROOT, env=env, timeout=900)
        assert "variants: 1 finished (1 completed" in out.stdout, out.stdout[-3000:]
        # the search joined the cluster `ray up` started (launch.py sets RAY_ADDRESS=auto), not a new one
        assert f"ray: joined the cluster at 127.0.0.1:{gcs} (RAY_ADDRESS)" in out.stdout
    finally:
        down = subprocess.run(["ray", "down", "-y", str(path)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
    assert down.returncode == 0, down.stderr[-2000:]
    pop = load_population(run_dir)
    assert len(pop) == 1 and (pop["status"] == "completed").all()
    head = subprocess.run(["pgrep", "-f", f"gcs_server.*{gcs}"], capture_output=True)
    assert head.returncode == 1  # ray down stopped the head
