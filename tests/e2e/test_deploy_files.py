"""The deploy files give what a team adopting the service needs on the first afternoon: the
HTTP/JSON (Connect) listener on and reachable, their own catalog mounted, the read side closed
by a token from a Secret and by a NetworkPolicy, and the image one documented variable. Parsed
from compose.yaml and deploy/k8s (PyYAML), and checked with the service's own validators
(service.config), so a manifest the service would refuse fails here; with kubectl installed,
the kustomization is rendered as `kubectl apply -k` would."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs; types-PyYAML is not locked

from service.config import http_listen, load_catalog, read_tokens
from service.domain.catalog import parse_catalog_text

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
README = (ROOT / "README.md").read_text()
CLIENT_LABEL = ("plan-entitlements/client", "true")
Doc = dict[str, Any]


def k8s_objects(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_objects() -> list[Doc]:
    return [
        d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
        for d in k8s_objects(p)
    ]  # fmt: skip


def one(kind: str, name: str) -> Doc:
    found = [d for d in all_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in deploy/k8s"
    return found[0]


def container(deployment: Doc) -> Doc:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env_of(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


def port_number(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def service_container() -> Doc:
    return container(one("Deployment", "entitlements-service"))


# --- Kubernetes ----------------------------------------------------------------------------


def test_k8s_enables_the_http_listener_and_exposes_its_port() -> None:
    c = service_container()
    listen = http_listen(env_of(c)["ENTITLEMENTS_HTTP_LISTEN"]["value"])
    assert listen is not None and listen.startswith("0.0.0.0:"), listen  # reachable from pods
    ports = {p["containerPort"]: p["name"] for p in c["ports"]}
    name = ports[port_number(listen)]
    svc = one("Service", "entitlements-service")
    assert any(p["targetPort"] in (name, port_number(listen)) for p in svc["spec"]["ports"])


def test_k8s_read_token_comes_from_the_secret() -> None:
    token = env_of(service_container())["ENTITLEMENTS_READ_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "entitlements" and not ref.get("optional", False), ref
    (secret,) = k8s_objects(K8S / "examples" / "secret.example.yaml")
    assert read_tokens(secret["stringData"][ref["key"]])  # the example is a token it accepts
    # ... and the `kubectl create secret` it shows creates the key too.
    assert f"--from-literal={ref['key']}=" in (K8S / "examples" / "secret.example.yaml").read_text()


def test_k8s_catalog_is_a_mounted_configmap_that_parses() -> None:
    deployment = one("Deployment", "entitlements-service")
    c = container(deployment)
    path = Path(env_of(c)["ENTITLEMENTS_CATALOG"]["value"])
    (mount,) = [m for m in c["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    assert mount.get("readOnly") is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    source = volumes[mount["name"]]["configMap"]
    inside = path.relative_to(mount["mountPath"]).as_posix()
    key = next(i["key"] for i in source.get("items", [{"key": inside, "path": inside}])
               if i["path"] == inside)  # fmt: skip
    text = one("ConfigMap", source["name"])["data"][key]
    catalog = parse_catalog_text(text, "deploy/k8s ConfigMap")
    assert catalog.fingerprint == load_catalog(None).fingerprint  # the bundled one, as shipped
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/catalog"] == hashlib.sha256(text.encode()).hexdigest(), (
        "checksum/catalog of service.yaml's pod template: set it to the sha256 of the catalog"
    )


def _peers_allowed(policy: Doc, port: str | int) -> list[Doc]:
    """The `from` peers of every rule admitting `port` (a rule without `from` or `ports`
    admits everyone / every port: reported as {"any": True})."""
    peers: list[Doc] = []
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is None or any(p.get("port") == port for p in ports):
            peers.extend(rule.get("from") or [{"any": True}])
    return peers


def namespace(name: str) -> Doc:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def test_k8s_network_policy_closes_the_service_to_all_but_clients_gateway_and_monitoring() -> None:
    policies = [d for d in all_objects() if d["kind"] == "NetworkPolicy"]
    labels = one("Deployment", "entitlements-service")["spec"]["template"]["metadata"]["labels"]
    (policy,) = [
        p for p in policies
        if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]  # fmt: skip
    assert "Ingress" in policy["spec"]["policyTypes"]
    client = {"podSelector": {"matchLabels": dict([CLIENT_LABEL])}}
    gateway = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "entitlements-gateway"}}}
    monitoring = namespace("monitoring")
    assert _peers_allowed(policy, "http") == [client]
    assert sorted(map(str, _peers_allowed(policy, "grpc"))) == sorted(map(str, [client, gateway]))
    assert _peers_allowed(policy, "metrics") == [monitoring]
    # The gateway reaches the service's gRPC port, which the policy admits from it.
    target = env_of(container(one("Deployment", "entitlements-gateway")))["ENTITLEMENTS_TARGET"]
    assert port_number(target["value"]) == 50051
    gw_labels = one("Deployment", "entitlements-gateway")["spec"]["template"]["metadata"]["labels"]
    (gw_policy,) = [
        p for p in policies
        if p["spec"]["podSelector"]["matchLabels"].items() <= gw_labels.items()
    ]  # fmt: skip
    ingress = namespace("ingress-nginx")
    assert ingress in _peers_allowed(gw_policy, "http")
    assert {"any": True} not in _peers_allowed(gw_policy, "http")
    # Documented: the label clients need, the namespaces assumed.
    assert f'{CLIENT_LABEL[0]}: "{CLIENT_LABEL[1]}"' in README
    assert "`monitoring`" in README and "`ingress-nginx`" in README


def kustomization() -> Doc:
    doc: Doc = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return doc


def test_k8s_image_is_one_documented_kustomize_variable() -> None:
    k = kustomization()
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == manifests  # `kubectl apply -k deploy/k8s` applies them all
    names = {i["name"]: i for i in k["images"]}
    workloads = [d for d in all_objects() if d["kind"] in ("Deployment", "Job")]
    assert len(workloads) == 3
    for w in workloads:
        image = container(w)["image"]
        assert image in names, f"{w['metadata']['name']}: {image} is not an `images:` entry"
    for entry in names.values():
        assert entry.get("newName") and entry.get("newTag")
    assert "ghcr.io/example" not in "".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert "kustomize edit set image plan-entitlements=" in README
    assert "kubectl apply -k deploy/k8s" in README


def test_kubectl_kustomize_renders_the_image_and_the_catalog() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the kustomization is not rendered")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    (entry,) = kustomization()["images"]
    images = {container(d)["image"] for d in docs if d["kind"] in ("Deployment", "Job")}
    assert images == {f"{entry['newName']}:{entry['newTag']}"}
    assert {d["kind"] for d in docs} >= {"ConfigMap", "NetworkPolicy", "Deployment", "Job"}


def test_k8s_resources_match_the_readme_resource_bounds() -> None:
    """The memory limit the README's "Resource bounds" adds up to (512 MiB), and the requests
    its Sizing states: never lowered without the README."""
    res = service_container()["resources"]
    assert res["limits"]["memory"] == "512Mi" and "under the 512 MiB Kubernetes limit" in README
    assert res["requests"] == {"cpu": "500m", "memory": "256Mi"}
    assert "0.5 CPU\nand 256 MiB per service pod" in README
    gw = container(one("Deployment", "entitlements-gateway"))["resources"]
    assert gw["requests"] == {"cpu": "250m", "memory": "128Mi"} and "0.25 CPU / 128 MiB" in README


# --- compose -------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{(?P<name>[A-Z_]+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`; a missing required one
    raises KeyError with its message."""

    def sub(m: re.Match[str]) -> str:
        got = env.get(m["name"]) or ""
        if got:
            return got
        if m["op"] == ":?":
            raise KeyError(m["arg"])
        return m["arg"] or "" if m["op"] == ":-" else ""

    return _VAR.sub(sub, value)


def compose() -> Doc:
    doc: Doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return doc


def compose_service(env: dict[str, str]) -> Iterator[tuple[str, str]]:
    for name, value in compose()["services"]["service"]["environment"].items():
        yield name, interpolate(str(value), env)


SECRETS = {
    "BILLING_WEBHOOK_SYNC_SECRET": "s" * 40,
    "CLERK_WEBHOOK_SIGNING_SECRET": "whsec_" + "A" * 32,
    "ENTITLEMENTS_READ_TOKEN": "t" * 24,
}


def test_compose_enables_and_publishes_the_http_listener() -> None:
    env = dict(compose_service(SECRETS))
    listen = http_listen(env["ENTITLEMENTS_HTTP_LISTEN"])
    assert listen is not None
    published = [p.rsplit(":", 1)[1] for p in compose()["services"]["service"]["ports"]]
    assert str(port_number(listen)) in published


def test_compose_requires_a_read_token_from_the_environment() -> None:
    env = dict(compose_service(SECRETS))
    assert read_tokens(env["ENTITLEMENTS_READ_TOKEN"]) == (SECRETS["ENTITLEMENTS_READ_TOKEN"],)
    without = {k: v for k, v in SECRETS.items() if k != "ENTITLEMENTS_READ_TOKEN"}
    with pytest.raises(KeyError, match="ENTITLEMENTS_READ_TOKEN"):
        dict(compose_service(without))


@pytest.mark.parametrize(
    "catalog_file", [None, "./deploy/examples/my-catalog.toml"], ids=["bundled", "yours"]
)
def test_compose_mounts_the_catalog_the_service_reads(catalog_file: str | None) -> None:
    env = {**SECRETS, **({"ENTITLEMENTS_CATALOG_FILE": catalog_file} if catalog_file else {})}
    path = dict(compose_service(env))["ENTITLEMENTS_CATALOG"]
    volumes = compose()["services"]["service"]["volumes"]
    (bind,) = [v for v in volumes if isinstance(v, dict) and v["target"] == path]
    assert bind["type"] == "bind" and bind["read_only"] is True
    source = ROOT / interpolate(bind["source"], env)
    assert source.is_file(), source
    load_catalog(source)  # what the service would read at start; raises on a bad one


def test_compose_image_is_a_documented_variable_with_a_build() -> None:
    services = compose()["services"]
    for name in ("migrate", "service", "gateway"):
        image = services[name]["image"]
        assert image.startswith("${ENTITLEMENTS_IMAGE:-"), f"{name}: {image}"
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
    assert interpolate(services["service"]["image"], {"ENTITLEMENTS_IMAGE": "r/x:1"}) == "r/x:1"
    assert "ENTITLEMENTS_IMAGE" in README and "ENTITLEMENTS_CATALOG_FILE" in README


def test_the_example_catalog_is_valid() -> None:
    catalog = load_catalog(ROOT / "deploy" / "examples" / "my-catalog.toml")
    assert catalog.default_plan_name == "starter"
