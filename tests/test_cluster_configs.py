"""The cluster configs in cluster/ are well-formed, match the pins in
pyproject.toml, and only name job entrypoints that exist.

Nothing is launched: the Ray cluster launcher files go through Ray's own
``prepare_config`` + ``validate_config`` (what ``ray up`` runs before touching a
cloud, against ``ray/autoscaler/ray-schema.json``); the KubeRay manifests are
checked against the ``ray.io/v1`` field names of RayCluster / RayJob and for the
settings genlib relies on (autoscaling, GPU workers, shared /data, versions).
The security section holds every config to the cluster's front-door rules: Ray
token auth on, the token from a secret source and never in a file here, no
dashboard (the job API: remote code execution) on a non-loopback address
without auth, and containers that run as a fixed non-root uid without sudo,
privilege escalation or capabilities, on a read-only root filesystem.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER_FILES = ("aws-gpu.yaml", "local.yaml")
DATA_MOUNT = "/data"
PVC_NAME = "genlib-data"


# ----------------------------------------------------------------------------- pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_pin() -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"\s*ray(\[[^\]]*\])?\s*==\s*([0-9][\w.]*)\s*", dep)
        if m:
            return m.group(2)
    raise AssertionError("pyproject.toml does not pin ray with ==")


def python_pin() -> str:
    """"3.11" from requires-python = ">=3.11,<3.12"."""
    m = re.search(r">=\s*(\d+)\.(\d+)", _pyproject()["project"]["requires-python"])
    assert m, "requires-python has no >=X.Y lower bound"
    return f"{m.group(1)}.{m.group(2)}"


def project_version() -> str:
    return _pyproject()["project"]["version"]


def official_ray_image() -> str:
    return f"rayproject/ray:{ray_pin()}-py{python_pin().replace('.', '')}-gpu"


def load(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one YAML document, got {len(docs)}"
    assert isinstance(docs[0], dict), f"{path.name}: top level is not a mapping"
    return docs[0]


def cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_pins_parse():
    assert re.fullmatch(r"\d+\.\d+\.\d+", ray_pin())
    assert re.fullmatch(r"3\.\d+", python_pin())


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_yaml_parses(path):
    load(path)


def test_expected_files_exist():
    for rel in ("Dockerfile", "README.md", *LAUNCHER_FILES, "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
                "kuberay/pvc.yaml"):
        assert (CLUSTER / rel).is_file(), f"cluster/{rel} is missing"


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuations joined."""
    out, buf = [], ""
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def test_dockerfile_base_image_matches_pins():
    froms = [args.split()[0] for word, args in dockerfile_instructions() if word == "FROM"]
    assert froms, "cluster/Dockerfile has no FROM"
    assert "$" not in froms[-1], "keep the FROM tag literal so it can be checked against pyproject.toml"
    assert froms[-1] == official_ray_image(), (
        f"cluster/Dockerfile builds on {froms[-1]}, but pyproject.toml pins ray {ray_pin()} "
        f"on Python {python_pin()}: use {official_ray_image()}")


def test_dockerfile_installs_the_project():
    steps = dockerfile_instructions()
    runs = " ".join(args for word, args in steps if word == "RUN")
    copies = [args for word, args in steps if word == "COPY"]
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", runs), "the image must `pip install .` the project"
    assert any(args.split()[-2:] == [".", "."] for args in copies), "the image must COPY the build context"
    workdirs = [args for word, args in steps if word == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/home/ray/genlib"


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip() for line in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "runs"} <= ignored


# ----------------------------------------------------------------------------- cluster launcher


def prepared(name: str) -> dict:
    """The config as `ray up` sees it: merged with the provider defaults and
    validated against Ray's schema (raises on unknown or mistyped fields)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load(CLUSTER / name))
    validate_config(config)
    return config


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_required_fields(name):
    raw = load(CLUSTER / name)
    assert isinstance(raw.get("cluster_name"), str) and raw["cluster_name"]
    assert isinstance(raw.get("provider", {}).get("type"), str)
    assert isinstance(raw.get("max_workers"), int) and raw["max_workers"] >= 1
    assert raw.get("idle_timeout_minutes", 0) > 0
    config = prepared(name)
    assert config["head_node_type"] in config["available_node_types"]
    for node_type, spec in config["available_node_types"].items():
        assert isinstance(spec.get("resources"), dict), f"{name}: node type {node_type} has no resources"
        assert spec["min_workers"] <= spec["max_workers"] <= config["max_workers"]


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_image_and_project_install(name):
    raw = load(CLUSTER / name)
    assert raw["docker"]["image"] == official_ray_image()
    assert f"{DATA_MOUNT}:{DATA_MOUNT}" in " ".join(raw["docker"]["run_options"]), "shared /data not mounted"
    # The checkout is shipped to every node and pip-installed from there.
    (remote,) = [r for r, local in raw["file_mounts"].items() if local == "."]
    assert any("pip install" in cmd and remote in cmd for cmd in raw["setup_commands"])
    head = " ".join(raw["head_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(raw["worker_start_ray_commands"])


def test_aws_config():
    raw = load(CLUSTER / "aws-gpu.yaml")
    assert raw["provider"]["type"] == "aws" and raw["provider"]["region"]
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    head = types[raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head should advertise no CPUs so no work lands there"
    assert "GPU" not in head["resources"]
    gpu_types = {k: v for k, v in types.items() if k != raw["head_node_type"] and v["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "aws-gpu.yaml needs a worker node type with a GPU resource"
    for name, spec in gpu_types.items():
        assert spec["min_workers"] == 0 and spec["max_workers"] >= 1, f"{name} should autoscale from zero"
        assert spec["node_config"]["InstanceType"]
    assert sum(t.get("min_workers", 0) for t in types.values()) <= raw["max_workers"]
    # The EFS placeholder stops `ray up` with a message instead of silently using node-local /data.
    init = " ".join(raw["initialization_commands"])
    assert "fs-CHANGEME" in init and "exit 1" in init
    assert f"REGION={raw['provider']['region']};" in init, "the EFS mount's REGION must equal provider.region"


def test_local_config():
    raw = load(CLUSTER / "local.yaml")
    provider = raw["provider"]
    assert provider["type"] == "local"
    # The local provider builds its single node type itself and refuses these.
    assert "available_node_types" not in raw and "head_node_type" not in raw
    assert "CHANGEME" in provider["head_ip"]
    assert provider["worker_ips"] and all("CHANGEME" in ip for ip in provider["worker_ips"])
    assert "CHANGEME" in raw["auth"]["ssh_user"]
    assert raw["max_workers"] == len(provider["worker_ips"])
    config = prepared("local.yaml")
    assert config["available_node_types"][config["head_node_type"]]["max_workers"] == len(provider["worker_ips"])


COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_commands_are_valid_shell(name):
    raw = load(CLUSTER / name)
    commands = [c for key in COMMAND_KEYS for c in raw.get(key) or []]
    for spec in (raw.get("available_node_types") or {}).values():
        commands += [c for key in COMMAND_KEYS for c in spec.get(key) or []]
    assert commands
    for cmd in commands:
        assert isinstance(cmd, str)
        proc = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: not valid bash: {cmd!r}\n{proc.stderr}"


# ----------------------------------------------------------------------------- KubeRay

# ray.io/v1 field names (KubeRay 1.x API types); a typo in a manifest is silently
# dropped by the API server, so every key used must be one of these.
RAYCLUSTER_SPEC_KEYS = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
                        "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
                        "workerGroupSpecs", "authOptions"}
AUTOSCALER_KEYS = {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                   "upscalingMode", "env", "envFrom", "volumeMounts", "version"}
HEAD_GROUP_KEYS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_KEYS = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                     "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
RAYJOB_SPEC_KEYS = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
                    "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "entrypoint",
                    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
                    "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"}
POD_SPEC_KEYS = {"containers", "initContainers", "volumes", "securityContext", "tolerations", "nodeSelector",
                 "affinity", "serviceAccountName", "restartPolicy", "imagePullSecrets", "priorityClassName",
                 "terminationGracePeriodSeconds"}
CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "ports", "env", "envFrom", "resources", "volumeMounts",
                  "command", "args", "securityContext", "lifecycle", "livenessProbe", "readinessProbe",
                  "workingDir"}


def raycluster() -> dict:
    return load(KUBERAY / "raycluster.yaml")


def rayjob() -> dict:
    return load(KUBERAY / "rayjob.yaml")


def _keys_known(obj: dict, known: set[str], where: str) -> None:
    unknown = set(obj) - known
    assert not unknown, f"{where}: unknown field(s) {sorted(unknown)}"


def _pod_templates(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"]["spec"])]
    out += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return out


def _gpu_limit(container: dict) -> float:
    return float(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def check_cluster_spec(spec: dict, where: str) -> None:
    _keys_known(spec, RAYCLUSTER_SPEC_KEYS, where)
    assert isinstance(spec["rayVersion"], str) and spec["rayVersion"] == ray_pin(), (
        f"{where}: rayVersion {spec['rayVersion']!r} != ray pinned in pyproject.toml ({ray_pin()})")
    assert spec.get("enableInTreeAutoscaling") is True, f"{where}: autoscaling is not enabled"
    _keys_known(spec.get("autoscalerOptions", {}), AUTOSCALER_KEYS, f"{where}.autoscalerOptions")
    assert spec.get("autoscalerOptions", {}).get("upscalingMode", "Default") in {"Default", "Aggressive",
                                                                                 "Conservative"}

    head = spec["headGroupSpec"]
    _keys_known(head, HEAD_GROUP_KEYS, f"{where}.headGroupSpec")
    params = head["rayStartParams"]
    assert all(isinstance(v, str) for v in params.values()), "rayStartParams values must be strings"
    assert params.get("num-cpus") == "0", "the head should advertise no CPUs so no work lands there"

    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no workerGroupSpecs"
    assert len({g["groupName"] for g in groups}) == len(groups), "groupName must be unique"
    for g in groups:
        _keys_known(g, WORKER_GROUP_KEYS, f"{where}.workerGroupSpecs[{g['groupName']}]")
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        lo, hi = g["minReplicas"], g["maxReplicas"]
        assert isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= g.get("replicas", lo) <= hi and hi >= 1

    gpu_groups = [g for g in groups if any(_gpu_limit(c) >= 1 for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, f"{where}: no worker group has nvidia.com/gpu limits"
    for g in gpu_groups:
        assert g["minReplicas"] == 0, f"{where}: GPU group {g['groupName']} should scale from zero"
        for c in g["template"]["spec"]["containers"]:
            limits, requests = c["resources"]["limits"], c["resources"].get("requests", {})
            if "nvidia.com/gpu" in requests:
                assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"], "GPU requests must equal limits"

    for name, pod in _pod_templates(spec):
        _keys_known(pod, POD_SPEC_KEYS, f"{where}[{name}].template.spec")
        containers = pod["containers"]
        assert containers, f"{where}[{name}]: no containers"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in containers:
            _keys_known(c, CONTAINER_KEYS, f"{where}[{name}].containers[{c.get('name')}]")
            assert c.get("name") and c.get("image"), f"{where}[{name}]: container without name/image"
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert set(mounts.values()) <= set(volumes), f"{where}[{name}]: mount of an undefined volume"
            assert DATA_MOUNT in mounts, f"{where}[{name}]: shared {DATA_MOUNT} not mounted"
            assert volumes[mounts[DATA_MOUNT]]["persistentVolumeClaim"]["claimName"] == PVC_NAME
        # Ray's containers: the head's is first, the workers' carry the GPU limits.
        assert containers[0]["name"] == ("ray-head" if name == "head" else "ray-worker")


def test_raycluster():
    doc = raycluster()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    check_cluster_spec(doc["spec"], "raycluster.yaml")


def test_kuberay_images_are_the_genlib_image():
    images = {c["image"] for _, pod in _pod_templates(raycluster()["spec"]) for c in pod["containers"]}
    assert len(images) == 1, f"head and workers must run the same image, got {sorted(images)}"
    image = images.pop()
    repo, _, tag = image.rpartition(":")
    assert repo.rsplit("/", 1)[-1] == "genlib", f"{image} is not the image built from cluster/Dockerfile"
    assert tag == project_version(), f"image tag {tag} != genlib version {project_version()} in pyproject.toml"
    assert image == image.lower(), "image references must be lower case"


def test_pvc():
    doc = load(KUBERAY / "pvc.yaml")
    assert doc["apiVersion"] == "v1" and doc["kind"] == "PersistentVolumeClaim"
    assert doc["metadata"]["name"] == PVC_NAME
    assert "ReadWriteMany" in doc["spec"]["accessModes"], "every Ray pod mounts /data at once"
    assert doc["spec"]["resources"]["requests"]["storage"]


def test_rayjob():
    doc = rayjob()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    _keys_known(spec, RAYJOB_SPEC_KEYS, "rayjob.yaml spec")
    assert spec.get("submissionMode", "K8sJobMode") in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    assert spec["shutdownAfterJobFinishes"] is True
    assert "clusterSelector" not in spec, "rayClusterSpec and clusterSelector are alternatives"
    check_cluster_spec(spec["rayClusterSpec"], "rayjob.yaml rayClusterSpec")
    # Identical but for the dashboard host: the operator and the submitter pod
    # reach the RayJob's dashboard over the pod network (see the security tests).
    job_spec = copy.deepcopy(spec["rayClusterSpec"])
    job_spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] = dashboard_host_kuberay(raycluster()["spec"])
    assert job_spec == raycluster()["spec"], (
        "rayjob.yaml's rayClusterSpec must stay identical to raycluster.yaml's spec (dashboard-host aside)")
    submitter = spec["submitterPodTemplate"]["spec"]
    _keys_known(submitter, POD_SPEC_KEYS, "rayjob.yaml submitterPodTemplate.spec")
    for c in submitter["containers"]:
        _keys_known(c, CONTAINER_KEYS, f"rayjob.yaml submitter container {c.get('name')}")
    assert submitter["restartPolicy"] == "Never", "a Kubernetes Job's pod must not restart in place"


def test_rayjob_runtime_env():
    spec = rayjob()["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict)
    assert set(runtime_env) <= {"working_dir", "env_vars", "pip", "py_modules", "excludes", "config"}
    workdirs = [args for word, args in dockerfile_instructions() if word == "WORKDIR"]
    assert runtime_env["working_dir"] == workdirs[-1], "working_dir must be the project folder in the image"
    assert all(isinstance(v, str) for v in runtime_env.get("env_vars", {}).values()), "env var values are strings"
    # Ray's own runtime_env validation; it checks that a local working_dir exists,
    # so point it at this checkout (what the image holds at /home/ray/genlib).
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**{**runtime_env, "working_dir": str(ROOT)})


def test_rayjob_entrypoint_is_a_job_in_this_repo():
    entrypoint = rayjob()["spec"]["entrypoint"].split()
    assert entrypoint[0] == "python" and entrypoint[1].startswith("jobs/"), entrypoint
    assert (ROOT / entrypoint[1]).is_file(), f"RayJob entrypoint {entrypoint[1]} does not exist"
    assert "--workdir" in entrypoint
    workdir = entrypoint[entrypoint.index("--workdir") + 1]
    assert workdir.startswith(DATA_MOUNT + "/"), "the pipeline's workdir must be on the shared volume"


# ----------------------------------------------------------------------------- security

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
AUTH_SECRET = "genlib-ray-auth"       # the Secret KubeRay reads the token from (key auth_token)
RAY_HOME_TOKEN = "/home/ray/.ray/auth_token"  # where Ray looks for the token in the image (ray's home)
# Env vars that name a directory a process writes to; on a read-only root
# filesystem each must point into a writable mount.
WRITABLE_DIR_VARS = ("TORCH_HOME", "MPLCONFIGDIR", "TRITON_HOME", "XDG_CACHE_HOME", "HF_HOME", "TMPDIR")


def dashboard_host_launcher(raw: dict) -> str:
    """The --dashboard-host of the head's `ray start` (Ray's default: loopback)."""
    m = re.search(r"--dashboard-host[= ](\S+)", " ".join(raw["head_start_ray_commands"]))
    return m.group(1) if m else "127.0.0.1"


def dashboard_host_kuberay(spec: dict) -> str:
    # KubeRay passes --dashboard-host=0.0.0.0 unless rayStartParams says otherwise.
    return spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "0.0.0.0")


def launcher_auth_on(raw: dict) -> bool:
    """RAY_AUTH_MODE=token reaches every Ray process: in the container's
    environment, or exported by both the head's and the workers' start commands."""
    env_opts = " ".join(raw.get("docker", {}).get("run_options", []))
    if re.search(r"(^|\s)(-e|--env)[= ]RAY_AUTH_MODE=token(\s|$)", env_opts):
        return True
    starts = [" ".join(raw.get(k) or []) for k in ("head_start_ray_commands", "worker_start_ray_commands")]
    return all("RAY_AUTH_MODE=token" in cmds for cmds in starts)


def kuberay_auth_on(spec: dict) -> bool:
    return spec.get("authOptions", {}).get("mode") == "token"


def test_no_dashboard_on_the_network_without_auth():
    """The dashboard's job API runs arbitrary code: a config that binds it to a
    non-loopback address must have token auth on."""
    configs = [(n, dashboard_host_launcher(load(CLUSTER / n)), launcher_auth_on(load(CLUSTER / n)))
               for n in LAUNCHER_FILES]
    configs += [("raycluster.yaml", dashboard_host_kuberay(raycluster()["spec"]), kuberay_auth_on(raycluster()["spec"])),
                ("rayjob.yaml", dashboard_host_kuberay(rayjob()["spec"]["rayClusterSpec"]),
                 kuberay_auth_on(rayjob()["spec"]["rayClusterSpec"]))]
    for name, host, auth in configs:
        assert host in LOOPBACK or auth, f"{name}: dashboard on {host} without token auth"


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_token_auth_and_loopback_dashboard(name):
    raw = load(CLUSTER / name)
    assert launcher_auth_on(raw), f"{name}: RAY_AUTH_MODE=token is not set for every node"
    # The token is a file synced from the submitter's machine (outside the
    # checkout, so it is never committed) to where Ray reads it in the container.
    local = raw["file_mounts"].get(RAY_HOME_TOKEN)
    assert local, f"{name}: no file_mounts entry for {RAY_HOME_TOKEN}"
    assert local.startswith(("~", "/")), f"{name}: the token source {local} must be outside the checkout"
    # The documented way in is `ray dashboard` (an SSH tunnel to the head's loopback).
    assert dashboard_host_launcher(raw) in LOOPBACK, f"{name}: dashboard is not on loopback"
    opts = " ".join(raw["docker"]["run_options"])
    assert re.search(r"--security-opt[= ]no-new-privileges", opts), (
        f"{name}: containers must run with no-new-privileges (the official image has passwordless sudo)")


def _ray_containers(spec: dict) -> list[tuple[str, dict, dict]]:
    """(where, container, pod spec) for the head's and the workers' containers."""
    return [(f"{name}.{c['name']}", c, pod) for name, pod in _pod_templates(spec) for c in pod["containers"]]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _check_token_env(env: dict[str, dict], where: str) -> None:
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE is not token"
    token = env.get("RAY_AUTH_TOKEN", {})
    assert "value" not in token, f"{where}: RAY_AUTH_TOKEN is written into the manifest"
    ref = token.get("valueFrom", {}).get("secretKeyRef", {})
    assert ref == {"name": AUTH_SECRET, "key": "auth_token"}, f"{where}: RAY_AUTH_TOKEN not from Secret {AUTH_SECRET}"


@pytest.mark.parametrize("which", ["raycluster", "rayjob"])
def test_kuberay_token_auth(which):
    doc = raycluster() if which == "raycluster" else rayjob()
    spec = doc["spec"] if which == "raycluster" else doc["spec"]["rayClusterSpec"]
    assert spec.get("authOptions") == {"mode": "token", "secretName": AUTH_SECRET}, (
        f"{which}: authOptions must turn token auth on with the Secret {AUTH_SECRET}")
    # Also spelled out per container: an operator that drops authOptions must
    # still start an authenticated cluster (or none, while the Secret is missing).
    for where, c, _ in _ray_containers(spec):
        _check_token_env(_env(c), f"{which}[{where}]")
    _check_token_env({e["name"]: e for e in spec["autoscalerOptions"].get("env", [])}, f"{which}[autoscaler]")
    if which == "rayjob":
        for c in doc["spec"]["submitterPodTemplate"]["spec"]["containers"]:
            _check_token_env(_env(c), f"rayjob[submitter.{c['name']}]")


def test_kuberay_dashboard_exposure():
    # Long-lived cluster: reached with `kubectl port-forward` only.
    assert dashboard_host_kuberay(raycluster()["spec"]) in LOOPBACK
    # RayJob: on the pod network for the operator, so never beyond the cluster.
    for where, spec in (("raycluster", raycluster()["spec"]), ("rayjob", rayjob()["spec"]["rayClusterSpec"])):
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head Service exposed outside"
        assert not head.get("enableIngress"), f"{where}: an Ingress would expose the dashboard"


def dockerfile_user() -> tuple[int, int | None]:
    """(uid, gid) of the image's final USER, which must be numeric."""
    users = [args for word, args in dockerfile_instructions() if word == "USER"]
    assert users, "cluster/Dockerfile sets no USER (the base image's may change)"
    m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert m, f"the final USER {users[-1]!r} must be numeric, so runAsNonRoot can verify it"
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


def test_dockerfile_drops_sudo_and_runs_as_non_root():
    steps = dockerfile_instructions()
    runs = [args for word, args in steps if word == "RUN"]
    for args in runs:
        assert "NOPASSWD" not in args, f"a RUN step grants passwordless sudo: {args}"
        assert not re.search(r"(^|[;&|({]\s*|\b(then|do|exec)\s+)sudo\b", args), f"a RUN step uses sudo: {args}"
    # The official base image gives `ray` passwordless sudo; the image must remove it.
    assert any(re.search(r"apt-get (purge|remove)\b[^;&|]*\bsudo\b", args) for args in runs), (
        "cluster/Dockerfile does not remove the base image's sudo")
    uid, _ = dockerfile_user()
    assert uid != 0, "the image must end as a non-root USER"


def _effective(c: dict, pod: dict, key: str):
    """A securityContext field as the kubelet applies it: the container's, else the pod's."""
    return c.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


def _check_hardened(c: dict, pod: dict, where: str, uid: int) -> None:
    sc = c.get("securityContext")
    assert sc, f"{where}: no securityContext"
    assert _effective(c, pod, "runAsNonRoot") is True, f"{where}: runAsNonRoot"
    assert _effective(c, pod, "runAsUser") == uid, f"{where}: runAsUser must be the image's uid {uid}"
    assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
    assert not sc.get("privileged"), f"{where}: privileged"
    assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities not dropped"
    assert not sc.get("capabilities", {}).get("add"), f"{where}: capabilities added"
    assert sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem is writable"
    seccomp = _effective(c, pod, "seccompProfile") or {}
    assert seccomp.get("type") == "RuntimeDefault", f"{where}: seccompProfile"


def _check_writable_dirs(c: dict, pod: dict, where: str, extra: tuple[str, ...] = ()) -> None:
    """A read-only root needs /tmp (and `extra`) on emptyDirs, and every cache
    directory named in the environment inside a mounted volume."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    for path in ("/tmp", *extra):
        assert path in mounts and "emptyDir" in volumes[mounts[path]], f"{where}: {path} is not an emptyDir"
    for name, var in _env(c).items():
        if name in WRITABLE_DIR_VARS:
            value = var.get("value", "")
            assert any(value == m or value.startswith(m.rstrip("/") + "/") for m in mounts), (
                f"{where}: {name}={value} is on the read-only root filesystem")


@pytest.mark.parametrize("which", ["raycluster", "rayjob"])
def test_kuberay_containers_are_hardened(which):
    uid, gid = dockerfile_user()
    doc = raycluster() if which == "raycluster" else rayjob()
    spec = doc["spec"] if which == "raycluster" else doc["spec"]["rayClusterSpec"]
    pods = [pod for _, pod in _pod_templates(spec)]
    if which == "rayjob":
        pods.append(doc["spec"]["submitterPodTemplate"]["spec"])
    for pod in pods:
        # Pod level too: it also covers the init containers KubeRay injects.
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert gid is None or pod["securityContext"].get("fsGroup") == gid, "fsGroup must be the image's gid"
        for c in pod["containers"]:
            where = f"{which}[{c['name']}]"
            _check_hardened(c, pod, where, uid)
            # Ray's temp dir /tmp/ray holds logs, sockets and spilled objects.
            _check_writable_dirs(c, pod, where, () if "submitter" in c["name"] else ("/tmp/ray", "/dev/shm"))
    # The autoscaler sidecar runs in the head pod; KubeRay adds its /tmp/ray.
    head_pod = spec["headGroupSpec"]["template"]["spec"]
    _check_hardened(spec["autoscalerOptions"], head_pod, f"{which}[autoscaler]", uid)
    _check_writable_dirs(spec["autoscalerOptions"], head_pod, f"{which}[autoscaler]")


# A literal token: RAY_AUTH_TOKEN=abc..., auth_token: abc... (a committed Secret).
LITERAL_TOKEN = re.compile(r"""(RAY_AUTH_TOKEN|\bauth_token)\s*[=:]\s*["']?(?![$<{])[\w.+/-]{8,}""")


def test_no_token_is_written_into_cluster_files():
    for path in cluster_files():
        for m in LITERAL_TOKEN.finditer(path.read_text(errors="replace")):
            raise AssertionError(f"{path.relative_to(ROOT)}: a literal Ray auth token: {m.group(0)!r}")


# ----------------------------------------------------------------------------- cross-file


JOB_REF = re.compile(r"python3?\s+(jobs/[\w./-]+\.py)")


def test_every_mentioned_job_exists():
    """Every `python jobs/X.py` in cluster/ (configs, Dockerfile, README) names a real file."""
    mentioned: dict[str, set[str]] = {}
    for path in cluster_files():
        for job in JOB_REF.findall(path.read_text(errors="replace")):
            mentioned.setdefault(job, set()).add(str(path.relative_to(ROOT)))
    assert mentioned, "no `python jobs/...` found in cluster/"
    missing = {job: sorted(where) for job, where in mentioned.items() if not (ROOT / job).is_file()}
    assert not missing, f"job entrypoints mentioned but missing: {missing}"


def test_readme_covers_every_config_and_placeholder():
    readme = (CLUSTER / "README.md").read_text()
    for path in cluster_files():
        if path.suffix in {".yaml", ""} and path.name != "README.md":
            assert path.name in readme, f"cluster/README.md does not mention {path.name}"
    for token in ("fs-CHANGEME", "CHANGEME_HEAD_IP", "CHANGEME_SSH_USER", "registry.example.com/changeme",
                  "CHANGEME-rwx-storage-class"):
        assert token in readme, f"cluster/README.md does not list the placeholder {token}"
    for mode in ("ray up", "ray down", "ray start --head", "ray job submit", "--working-dir .", "kubectl apply"):
        assert mode in readme
    for knob in ("use_gpu", "gpus_per_actor", "storage_path"):
        assert knob in readme
    # How to get in: the token, and the tunnels to a loopback-only dashboard.
    for step in ("export RAY_AUTH_MODE=token", "ray get-auth-token --generate", "RAY_AUTH_TOKEN_PATH",
                 f"kubectl create secret generic {AUTH_SECRET}", "ray dashboard cluster/", "kubectl port-forward",
                 "ssh -L 8265:127.0.0.1:8265"):
        assert step in readme, f"cluster/README.md does not show {step!r}"
