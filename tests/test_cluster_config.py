"""cluster.yaml: Ray's own cluster-launcher checks, the EC2 API's parameter shapes, and what users rely on.

No network, no AWS credentials, no Ray runtime: this runs the offline part of `ray up`
(`prepare_config` then `validate_config`, as `ray.autoscaler._private.commands._bootstrap_config`
does before it talks to AWS), and checks each node_config against the RunInstances request
shape from botocore's bundled service model, as Ray passes it to `ec2.create_instances`.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from importlib.metadata import requires
from pathlib import Path
from typing import Any

import botocore.session
import jsonschema
import pytest
import ray.autoscaler
import yaml
from botocore.validate import ParamValidator
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_checks(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before it contacts AWS; raises on a config it would refuse."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def node_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return config["available_node_types"]


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in node_types(config).items() if name != config["head_node_type"]}


def gpu_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in worker_types(config).items() if t["resources"].get("GPU", 0) > 0}


def run_instances_errors(node_config: dict[str, Any]) -> str:
    """botocore's report on node_config as a RunInstances request ('' when valid)."""
    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    request = {k: v for k, v in node_config.items() if k != "SubnetIds"}  # Ray resolves SubnetIds itself
    request.update(MinCount=1, MaxCount=1)
    return ParamValidator().validate(request, shape).generate_report()


SECRET_PATTERNS = [
    re.compile(r"aws_access_key_id|aws_secret_access_key|aws_session_token", re.IGNORECASE),
    re.compile(r"AKIA|\bASIA[0-9A-Z]{16}\b"),  # long-term and temporary access key ids
]


def secrets_in(text: str) -> list[str]:
    return [m.group(0) for pattern in SECRET_PATTERNS for m in pattern.finditer(text)]


# --- Ray's own validation ------------------------------------------------------------------


def test_ray_accepts_the_config(config):
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))  # the file as written
    prepared = ray_checks(config)  # and as `ray up` fills it out with the AWS defaults
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda c: c.update(max_workers="12"), jsonschema.ValidationError),
        (lambda c: c.update(unknown_key=1), jsonschema.ValidationError),
        (lambda c: c["available_node_types"]["gpu"].update(min_workers=0.5), jsonschema.ValidationError),
        (lambda c: c["available_node_types"]["gpu"]["resources"].update(GPU=-1), jsonschema.ValidationError),
        (lambda c: c["available_node_types"]["gpu"].pop("node_config"), jsonschema.ValidationError),
        (lambda c: c.update(head_node_type="nope"), ValueError),
        (lambda c: c["available_node_types"]["gpu"].update(min_workers=c["max_workers"] + 1), ValueError),
    ],
    ids=[
        "max_workers-str",
        "unknown-key",
        "min_workers-float",
        "negative-gpu",
        "no-node_config",
        "bad-head",
        "min-over-max",
    ],
)
def test_ray_refuses_a_broken_config(config, mutate, error):
    ray_checks(config)  # the unmodified file passes, so the failure below is the mutation's
    mutate(config)
    with pytest.raises(error):
        ray_checks(config)


def test_node_configs_are_valid_run_instances_requests(config):
    for name, node_type in node_types(config).items():
        assert run_instances_errors(node_type["node_config"]) == "", name


def test_run_instances_check_catches_typos(config):
    node_config = dict(next(iter(gpu_types(config).values()))["node_config"])
    node_config["InstanceMarketOption"] = node_config.pop("InstanceMarketOptions")
    assert "Unknown parameter" in run_instances_errors(node_config)
    node_config = dict(node_config, IamInstanceProfile="arn:aws:iam::123456789012:instance-profile/x")
    assert "Invalid type for parameter IamInstanceProfile" in run_instances_errors(node_config)


# --- what a user relies on -----------------------------------------------------------------


def test_gpu_group_scales_to_zero_on_spot_and_declares_its_gpus(config):
    gpus = gpu_types(config)
    assert gpus, "no worker type declares a GPU resource"
    for name, node_type in gpus.items():
        assert node_type.get("min_workers", 0) == 0, name
        assert 1 <= node_type["max_workers"] <= config["max_workers"], name
        assert node_type["resources"]["GPU"] >= 1 and node_type["resources"]["CPU"] >= 1, name
        assert node_type["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name


def test_head_takes_no_work_and_cpu_group_is_optional(config):
    head = node_types(config)[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert "InstanceMarketOptions" not in head["node_config"]  # on-demand: a spot reclaim would end the cluster
    cpu_only = {n: t for n, t in worker_types(config).items() if n not in gpu_types(config)}
    assert cpu_only, "no CPU worker group"
    for name, node_type in cpu_only.items():
        assert node_type.get("min_workers", 0) == 0 and node_type["resources"]["CPU"] >= 1, name
    maxima = sum(t["max_workers"] for t in worker_types(config).values())
    assert maxima <= config["max_workers"], "the groups' max_workers cannot all be reached"


def test_no_credentials_in_the_file(config):
    assert secrets_in(CLUSTER_YAML.read_text()) == []
    assert secrets_in("aws_secret_access_key: x") and secrets_in("key: AKIAIOSFODNN7EXAMPLE")  # the check works
    profile = re.compile(r"^arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+$")
    for name, node_type in node_types(config).items():
        assert profile.match(node_type["node_config"]["IamInstanceProfile"]["Arn"]), name


def test_file_mounts_carry_the_project_and_setup_installs_it(config):
    mounts = {remote: (ROOT / local).resolve() for remote, local in config["file_mounts"].items()}
    project = [remote for remote, local in mounts.items() if local == ROOT]
    assert project, f"no file mount carries the repository root (ray up runs from it): {config['file_mounts']}"
    assert (ROOT / "pyproject.toml").is_file()

    words = [shlex.split(cmd) for cmd in config["setup_commands"]]
    installs = [w for w in words if "pip" in w and "install" in w]
    assert any("-e" in w and w[w.index("-e") + 1] in project for w in installs), config["setup_commands"]

    # Ray pinned exactly, with the dashboard (job submission), within the project's own bounds.
    wanted = next(r for r in map(Requirement, requires("adain-ray") or []) if r.name == "ray" and not r.marker)
    pins = [Requirement(w) for cmd in installs for w in cmd if w.startswith("ray[")]
    assert len(pins) == 1 and "default" in pins[0].extras, pins
    (spec,) = pins[0].specifier
    assert spec.operator == "==" and wanted.specifier.contains(spec.version), (spec, wanted)
    assert wanted.extras <= pins[0].extras


def test_no_docker_and_default_start_commands(config):
    prepared = ray_checks(config)
    assert not prepared["docker"]  # nodes run the AMI directly
    assert "head_start_ray_commands" not in config and "worker_start_ray_commands" not in config
    assert config["head_setup_commands"] == []  # Ray's default step installs nothing the project lacks
