"""Issue 14, item 2: the Kubernetes manifests (``examples/kubernetes/``) are valid for the
supported Kubernetes version, their ``pbt-actors`` commands are ones the real CLI parser
accepts, every file they name is mounted from a Secret or ConfigMap key that docs/kubernetes.md
creates, and the docs' commands name files that exist.

Offline: ``kubernetes-validate`` ships the OpenAPI-derived JSON schemas of each Kubernetes
release; ``strict`` rejects unknown fields (a misspelt key would otherwise be dropped silently
by the API server).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from pbt_actors.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "examples" / "kubernetes"
DOCS = REPO / "docs" / "kubernetes.md"
KUBERNETES_VERSION = "1.30.0"
"""The oldest release the manifests promise to work on (podFailurePolicy is GA since 1.31 but
on by default since 1.26; the 1.30 schema has every field used)."""


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


NODE_LOST_RECOVERY_S = 300 + 360
"""How long a controller pod on a lost node takes to come back at least: the default
``tolerationSeconds`` of the ``unreachable`` taint (300 s) before eviction, plus the
attach-detach controller's forced detach of its ReadWriteOnce volume (6 min)."""


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize folder``: what ``kubectl apply -k`` would send."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders kustomizations offline; no cluster needed)")
    done = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _variants(tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """The rendered default kustomization and one per component enabled (its commented lines
    uncommented, in a copy), as docs/kubernetes.md says to."""
    rendered = {"default": _kustomize(K8S)}
    for component in ("elastic", "object-storage"):
        copy = tmp_path / component
        shutil.copytree(K8S, copy)
        text = (copy / "kustomization.yaml").read_text()
        enabled = text.replace("# components:", "components:").replace(f"#   - {component}", f"  - {component}")
        assert enabled.count(f"  - {component}") == 1 and "components:\n" in enabled
        (copy / "kustomization.yaml").write_text(enabled)
        rendered[component] = _kustomize(copy)
    return rendered


def _by_kind(kind: str, name: str, file: str | None = None) -> dict[str, Any]:
    found = [d for f, d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name
             and (file is None or f == file)]
    assert len(found) == 1, (kind, name, file)
    return found[0]


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for file, doc in _manifests():
        if doc["kind"] in ("StatefulSet", "Deployment", "Job"):
            yield f"{file}:{doc['kind']}", doc["spec"]["template"]["spec"]


def _pbt_argv(container: dict[str, Any]) -> list[str]:
    """The ``pbt-actors`` arguments of a container (after a wrapper such as ``tini -g --``)."""
    line = [*container.get("command", []), *container.get("args", [])]
    assert "pbt-actors" in line, line
    return [str(a) for a in line[line.index("pbt-actors") + 1:]]


def _parse(argv: list[str]) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's usage error
        raise AssertionError(f"pbt-actors rejects {argv}") from exc


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, (flag, argv)
    return argv[argv.index(flag) + 1]


def _docs_commands() -> list[list[str]]:
    """Every shell command of the docs' ``bash`` blocks, split like a shell (comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOCS.read_text(), flags=re.S):
        for raw in block.splitlines():
            line = raw.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line.strip("()")))
    return commands


def _created(kind: str) -> dict[str, set[str]]:
    """``name -> keys`` of the Secrets (``secret``) or ConfigMaps (``configmap``) the docs create."""
    made: dict[str, set[str]] = {}
    for argv in _docs_commands():
        if argv[:1] == ["kubectl"] and "create" in argv and kind in argv:
            at = argv.index(kind)
            name = argv[at + 2] if kind == "secret" else argv[at + 1]  # secret generic NAME
            keys = {a.split("=", 1)[1].split("=")[0] if "=" in a.split("=", 1)[1] else Path(a.split("=", 1)[1]).name
                    for a in argv if a.startswith("--from-file=")}
            made[name] = keys
    return made


# --- schemas -------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_every_manifest_is_valid_for_the_supported_kubernetes_version() -> None:
    manifests = _manifests()
    assert {doc["kind"] for _, doc in manifests} >= {"StatefulSet", "Service", "Deployment", "Job",
                                                     "PersistentVolumeClaim"}
    for file, doc in manifests:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{file}: {doc['kind']} {doc['metadata']['name']}: {exc.message}") from None


@pytest.mark.timeout(60)
def test_the_schema_check_catches_a_misspelt_field() -> None:
    """The check above can fail: strict validation rejects a field Kubernetes does not know."""
    deployment = _by_kind("Deployment", "pbt-worker")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.timeout(30)
def test_the_kustomization_lists_existing_files_and_the_deployment_is_a_component() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "pbt"
    resources = kustomization["resources"]
    assert all((K8S / r).is_file() for r in resources), resources
    # every manifest goes through kustomize (issue 21, 7a): the Job by default, the Deployment
    # through the elastic component
    assert sorted(resources) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    component = yaml.safe_load((K8S / "elastic" / "kustomization.yaml").read_text())
    assert component["kind"] == "Component" and component["resources"] == ["worker-deployment.yaml"]
    images = {i["name"] for i in kustomization["images"]}
    for where, spec in _pod_specs():
        for container in spec["containers"]:
            assert container["image"] in images, where


@pytest.mark.timeout(120)
def test_what_kubectl_apply_k_sends_is_valid_and_runs_the_built_image(tmp_path: Path) -> None:
    """Issue 21, 7a: the rendered output (``kubectl kustomize``) of both variants passes strict
    validation, every pod runs the image the kustomization names (no bare ``pbt-actors``), in
    namespace pbt, with one worker workload each."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    image = "{newName}:{newTag}".format(**kustomization["images"][0])
    for variant, docs in _variants(tmp_path).items():
        kinds = sorted(d["kind"] for d in docs)
        expected = {"default": ["PersistentVolumeClaim", "Service", "StatefulSet", "Job"],
                    "elastic": ["PersistentVolumeClaim", "Service", "StatefulSet", "Deployment"],
                    "object-storage": ["Service", "StatefulSet", "Job"]}[variant]
        assert kinds == sorted(expected), (variant, kinds)
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{variant}: {doc['kind']} {doc['metadata']['name']}: {exc.message}") from None
            assert doc["metadata"]["namespace"] == "pbt", (variant, doc["kind"])
            if doc["kind"] in ("StatefulSet", "Deployment", "Job"):
                assert {c["image"] for c in doc["spec"]["template"]["spec"]["containers"]} == {image}, variant


@pytest.mark.timeout(120)
def test_the_object_storage_component_puts_every_checkpoint_root_in_the_bucket(tmp_path: Path) -> None:
    """Issue 21, 7d: no ReadWriteMany volume; both commands name the same bucket URL, which the
    CLI accepts; credentials come from the Secret pbt-s3; nothing mounts /checkpoints any more."""
    docs = _variants(tmp_path)["object-storage"]
    roots = set()
    for doc in docs:
        if doc["kind"] not in ("StatefulSet", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        container = spec["containers"][0]
        args = _parse(_pbt_argv(container))
        roots.add(args.checkpoint_root)
        assert container["envFrom"] == [{"secretRef": {"name": "pbt-s3"}}]
        assert all(m["mountPath"] != "/checkpoints" for m in container["volumeMounts"])
        assert all("persistentVolumeClaim" not in v for v in spec["volumes"])
    assert len(roots) == 1 and next(iter(roots)).startswith("s3://"), roots


@pytest.mark.timeout(60)
def test_pods_run_as_non_root_with_a_read_only_root_filesystem_and_gpu_pods_see_nvidia_smi() -> None:
    """Issue 21, 7e and 7f."""
    for where, spec in _pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0, where
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), where  # somewhere to write
            if "nvidia.com/gpu" in container["resources"].get("limits", {}):
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert "utility" in env["NVIDIA_DRIVER_CAPABILITIES"].split(","), where  # mounts nvidia-smi
    dockerfile = (K8S / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", dockerfile, flags=re.M) and ".[torch,s3]" in dockerfile
    assert (REPO / ".dockerignore").is_file() and ".git" in (REPO / ".dockerignore").read_text().split()


# --- the commands ----------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_the_commands_in_the_manifests_are_accepted_by_the_cli() -> None:
    service = _by_kind("Service", "pbt-controller")
    port = service["spec"]["ports"][0]["port"]
    controller = _by_kind("StatefulSet", "pbt-controller")
    argv = _pbt_argv(controller["spec"]["template"]["spec"]["containers"][0])
    args = _parse(argv)
    assert args.command == "controller" and args.bind == f"tcp://0.0.0.0:{port}"
    assert args.curve_secret and args.authorized_keys and not args.insecure  # CURVE on a pod network
    assert args.serve_finished  # a finished controller is not restarted in a loop (issue 21, 7c)
    assert controller["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == controller["spec"]["template"]["metadata"]["labels"]

    workers = [spec for where, spec in _pod_specs() if "StatefulSet" not in where]
    assert len(workers) == 2  # the Deployment and the Indexed Job
    for spec in workers:
        container = spec["containers"][0]
        argv = _pbt_argv(container)
        args = _parse(argv)
        assert args.command == "worker"
        assert args.connect == f"tcp://{service['metadata']['name']}:{port}"
        assert args.curve_server_key and args.curve_secret
        # a controller rescheduled from a lost node is waited for, not given up on (issue 21, 7b)
        assert args.controller_timeout > NODE_LOST_RECOVERY_S
        # the host's grace for its workers ends before the kubelet's SIGKILL
        assert args.stop_grace < spec["terminationGracePeriodSeconds"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert container["command"] == ["tini", "-g", "--"]  # SIGTERM to the whole process group
    job = _by_kind("Job", "pbt-worker")
    assert job["spec"]["completionMode"] == "Indexed"
    codes = {rule["action"]: rule["onExitCodes"]["values"] for rule in job["spec"]["podFailurePolicy"]["rules"]
             if "onExitCodes" in rule}
    from pbt_actors.common.exit_codes import EXIT_NO_CONTROLLER, EXIT_SIGTERM

    assert codes == {"FailJob": [EXIT_NO_CONTROLLER], "Ignore": [EXIT_SIGTERM]}


@pytest.mark.timeout(60)
def test_every_file_a_command_names_is_mounted_from_what_the_docs_create() -> None:
    """A path in a command lies under a volume mount; a Secret or ConfigMap volume holds the
    file name as a key that docs/kubernetes.md creates (a wrong name = a pod that cannot start)."""
    created = {"secret": _created("secret"), "configMap": _created("configmap")}
    claims = {d["metadata"]["name"] for _, d in _manifests() if d["kind"] == "PersistentVolumeClaim"}
    checked = 0
    for where, spec in _pod_specs():
        volumes = {v["name"]: v for v in spec["volumes"]}
        templates = {t["metadata"]["name"] for t in _by_kind("StatefulSet", "pbt-controller")["spec"]
                     ["volumeClaimTemplates"]} if "StatefulSet" in where else set()
        container = spec["containers"][0]
        mounts = container["volumeMounts"]
        for mount in mounts:
            volume = volumes.get(mount["name"])
            assert volume is not None or mount["name"] in templates, (where, mount)
            if volume is not None and "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
        for arg in _pbt_argv(container):
            if not arg.startswith("/"):
                continue
            mount = max((m for m in mounts if (arg + "/").startswith(m["mountPath"].rstrip("/") + "/")),
                        key=lambda m: len(m["mountPath"]), default=None)
            assert mount is not None, f"{where}: {arg} is on no volume"
            volume = volumes.get(mount["name"], {})
            for kind, field in (("secret", "secretName"), ("configMap", "name")):
                if kind in volume:
                    name = volume[kind][field]
                    assert name in created[kind], f"{where}: the docs never create {kind} {name}"
                    rest = arg[len(mount["mountPath"].rstrip("/")) + 1:]
                    if rest:  # a file: a key of it (a folder, e.g. --authorized-keys: the whole volume)
                        assert rest in created[kind][name], f"{where}: {arg}: no key {rest!r} in {kind} {name}"
                    checked += 1
    assert checked >= 6


@pytest.mark.timeout(60)
def test_the_docs_commands_name_files_that_exist_and_flags_the_cli_accepts() -> None:
    commands = _docs_commands()
    generated: set[str] = set()
    applied = []
    for argv in commands:
        if argv[:1] == ["pbt-actors"]:
            _parse(argv[1:])
            if argv[1:3] == ["keys", "generate"]:
                folder, name = _option(argv, "--dir"), _option(argv, "--name")
                generated |= {f"{folder}/{name}.key", f"{folder}/{name}.key_secret"}
        if argv[:1] == ["kubectl"] and "--" in argv and "pbt-actors" in argv:  # kubectl exec ... -- pbt-actors
            _parse(argv[argv.index("pbt-actors") + 1:])
        if argv[:1] == ["kubectl"] and "apply" in argv:
            assert "-k" in argv, f"{argv}: every apply goes through kustomize (its image, namespace, labels)"
            target = argv[argv.index("-k") + 1]
            assert (REPO / target / "kustomization.yaml").is_file(), target
            applied.append(target)
        for arg in argv:
            if arg.startswith("--from-file="):
                source = arg.split("=", 1)[1].split("=")[-1]
                assert source in generated or (REPO / source).is_file(), source
        if argv[:1] == ["docker"] and "-f" in argv:
            assert (REPO / _option(argv, "-f")).is_file()
    assert applied and set(applied) == {"examples/kubernetes"}
    # every Secret and ConfigMap the pods mount is created by the docs
    for where, spec in _pod_specs():
        for volume in spec["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in _created("secret"), where
            if "configMap" in volume:
                assert volume["configMap"]["name"] in _created("configmap"), where
    # the scale command names the Deployment that exists
    scaled = [a for argv in commands if "scale" in argv for a in argv if a.startswith("deployment/")]
    assert scaled and all(a == "deployment/" + _by_kind("Deployment", "pbt-worker")["metadata"]["name"]
                          for a in scaled)
