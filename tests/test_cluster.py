"""cluster/: the launcher configs and the KubeRay RayJob, checked against Ray's own schema and code."""

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def launcher_config(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / name).read_text())
    filled = prepare_config(raw)  # Ray's defaults for the provider, as `ray up` fills them
    validate_config(filled)  # ray-schema.json
    return raw, filled


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml", "onprem.yaml"])
def test_launcher_configs_are_valid_and_install_the_project(name):
    raw, filled = launcher_config(name)
    assert filled["head_node_type"] in filled["available_node_types"]
    assert raw["file_mounts"] == {"~/evolve": "."}  # the project, from where `ray up` runs
    assert ".venv" in raw["rsync_exclude"] and "runs" in raw["rsync_exclude"]
    setup = " ".join(raw["setup_commands"])
    assert "~/evolve" in setup and ("pip install" in setup or "setup.sh" in setup)
    assert any("ray start --head" in c for c in raw["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in raw["worker_start_ray_commands"])


def test_cloud_configs_have_gpu_workers_and_a_head_that_does_not_train():
    _, aws = launcher_config("aws.yaml")
    worker = aws["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["InstanceType"].startswith(("g5", "p4", "p5")) and worker["max_workers"] >= 1
    _, gcp = launcher_config("gcp.yaml")
    worker = gcp["available_node_types"]["gpu_worker"]
    assert worker["resources"]["GPU"] == 1
    assert worker["node_config"]["guestAccelerators"][0]["acceleratorCount"] == 1
    assert "GPU" not in gcp["available_node_types"]["head"]["resources"]


def test_onprem_config_lists_its_hosts():
    raw, filled = launcher_config("onprem.yaml")
    assert raw["provider"]["type"] == "local" and raw["provider"]["head_ip"]
    assert filled["max_workers"] == len(raw["provider"]["worker_ips"])


def test_kuberay_rayjob_describes_a_valid_cluster():
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python experiments/launch.py experiments/tiny_lm --run-dir s3://")
    assert spec["shutdownAfterJobFinishes"] is True
    assert "working_dir" in yaml.safe_load(spec["runtimeEnvYAML"])
    cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": job["metadata"],
          "spec": spec["rayClusterSpec"]}
    config = _derive_autoscaling_config_from_ray_cr(cr)  # KubeRay's translation, validated against the schema
    assert config["available_node_types"]["gpu"]["resources"]["GPU"] == 1
    assert config["available_node_types"]["headgroup"]["resources"]["CPU"] == 0  # the driver only


def test_storage_names_where_runs_go_unless_run_dir_does():
    from evolve.cli import run_target
    from evolve.spec import SpecError, load_spec

    exp = ROOT / "experiments" / "tiny_lm"
    assert run_target(load_spec(exp), None) == "runs/tiny_lm"
    spec = load_spec(exp, ["storage=s3://bucket/runs/"])
    assert run_target(spec, None) == "s3://bucket/runs/tiny_lm"
    assert run_target(spec, "gs://other/x") == "gs://other/x"
    with pytest.raises(SpecError, match="storage: expected"):
        load_spec(exp, ["storage=3"])
