"""cluster.yaml, checked offline: Ray's own validation (the schema Ray ships, after the
defaults `ray up` merges in), EC2's own parameter names for every node_config, and what
the schema cannot know about this project. No AWS call is made."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO / "cluster.yaml"
TRAINER_RESOURCE = "trainer"  # what `python -m train fit --worker-resource` names there


def load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validate_with_ray(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before it touches AWS: merge the provider's defaults, then
    validate against ray/autoscaler/ray-schema.json (additionalProperties: false)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ec2_run_instances_params() -> set[str]:
    """RunInstances' parameter names, from botocore's bundled service model (offline).
    Ray passes node_config to RunInstances as is; its schema accepts any object there."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("ec2")
    return set(model.operation_model("RunInstances").input_shape.members)


def check_node_configs(config: dict[str, Any]) -> None:
    known = ec2_run_instances_params()
    for name, node_type in config["available_node_types"].items():
        unknown = set(node_type["node_config"]) - known
        if unknown:
            raise ValueError(f"{name}.node_config: not RunInstances parameters: {sorted(unknown)}")


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def validate(config: dict[str, Any]) -> dict[str, Any]:
    prepared = validate_with_ray(config)
    check_node_configs(prepared)
    return prepared


def test_cluster_yaml_passes_rays_validation():
    prepared = validate(load())
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c["available_node_types"]["cpu_worker"].update(max_wokers=4),
                     id="node-type-key"),
        pytest.param(lambda c: c.update(idle_timeout_minute=5), id="top-level-key"),
        pytest.param(lambda c: c["docker"].update(imag="x"), id="docker-key"),
        pytest.param(lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
                     id="fractional-resource"),
        pytest.param(lambda c: c["available_node_types"]["cpu_worker"]["node_config"].update(
            InstanceTyp="c7i.2xlarge"), id="ec2-parameter"),
    ],
)  # fmt: skip
def test_a_typo_fails_validation(mutate):
    config = load()
    mutate(config)
    with pytest.raises(Exception, match=r"unexpected|not RunInstances|is not of type"):
        validate(config)


def test_node_types_fit_the_jobs():
    config = load()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    # Drivers only on the head: every task runs on a worker that autoscales.
    assert head["resources"].get("CPU") == 0
    cpu, gpu = types["cpu_worker"], types["gpu_worker"]
    assert cpu["min_workers"] == 0 and cpu["max_workers"] > 0
    assert cpu["resources"].get("CPU", 0) > 0 and not cpu["resources"].get("GPU")
    assert TRAINER_RESOURCE not in cpu["resources"]
    assert gpu["min_workers"] == 0
    # One trainer slot per GPU: `--gpu --worker-resource trainer` puts one worker per GPU.
    assert gpu["resources"][TRAINER_RESOURCE] == gpu["resources"]["GPU"] >= 1
    assert "gpu" in gpu.get("docker", {}).get("worker_image", "")
    assert 0 < config["idle_timeout_minutes"] <= 15
    assert config["max_workers"] >= cpu["max_workers"] + gpu["max_workers"]
    assert config["provider"]["cache_stopped_nodes"] is False
    for name, node_type in types.items():
        assert "IamInstanceProfile" in node_type["node_config"], name


def test_nodes_install_this_version_with_the_lock():
    config = load()
    commands = " ".join(config["setup_commands"])
    wheel = re.search(r"lakeclean-([0-9][^-]*)-py3-none-any\.whl", commands)
    assert wheel and wheel.group(1) == project_version()
    assert "-c ~/lakeclean-dist/requirements.lock" in commands
    assert config["file_mounts"]["~/lakeclean-dist"] == "./dist"
    # The images' Ray is the Ray the lock (and pyproject) pin.
    ray_pin = re.search(r"^ray==(\S+)$", (REPO / "requirements.lock").read_text(), re.M)
    images = [config["docker"]["image"]] + [
        t.get("docker", {}).get("worker_image", "") for t in config["available_node_types"].values()
    ]
    for image in filter(None, images):
        assert image.startswith(f"rayproject/ray:{ray_pin.group(1)}-py311"), image


def test_train_exposes_the_resource_the_gpu_nodes_carry():
    from train.config import TrainConfig
    from train.job import worker_resources

    cfg = TrainConfig()
    cfg.scaling.worker_resource = TRAINER_RESOURCE
    assert worker_resources(cfg) == {"CPU": 1.0, TRAINER_RESOURCE: 1.0}
    assert worker_resources(TrainConfig()) == {"CPU": 1.0}
