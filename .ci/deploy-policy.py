#!/usr/bin/env python3
"""The deployment's own rules, checked on the rendered overlays (kubernetes-validate
checks the Kubernetes schemas; this checks what the schemas cannot know).

usage: deploy-policy.py RENDERED_DIR

RENDERED_DIR holds dev.yaml and production.yaml (kustomize build of each overlay). Reads
deploy/ and apps/backend/src/metrics.rs from the repository root (the working directory).
Prints one line per rule broken and exits 1 if any, else one summary line.
"""

import re
import sys
from pathlib import Path

import yaml

SECRET_KEYS = {"JWT_SECRET", "PUBLISH_KEY", "REDIS_URL"}
SECRET_LIKE = re.compile(r"(SECRET|PASSWORD|PUBLISH_KEY|REDIS_URL|_TOKEN)$", re.I)
# After its drain the backend waits up to SHUTDOWN_GRACE (apps/backend/src/app.rs) for
# the requests in flight and idle keep-alive connections, then closes Redis: the grace
# period must cover that too, plus this margin.
MARGIN_SECS = 5


def shutdown_grace():
    source = Path("apps/backend/src/app.rs").read_text()
    found = re.search(r"const SHUTDOWN_GRACE: Duration = Duration::from_secs\((\d+)\)", source)
    check(found, "could not read SHUTDOWN_GRACE from apps/backend/src/app.rs")
    return int(found.group(1)) if found else 0

problems = []
checked = 0


def check(ok, message):
    global checked
    checked += 1
    if not ok:
        problems.append(message)
    return ok


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def registered_metrics():
    source = Path("apps/backend/src/metrics.rs").read_text()
    return set(re.findall(r'r\.register\(\s*"([a-z_:][a-z0-9_:]*)"', source))


def backend_metric(name, registered):
    """The registered family a sample name belongs to, or None."""
    for suffix in ("", "_total", "_bucket", "_sum", "_count"):
        if suffix and name.endswith(suffix) and name[: -len(suffix)] in registered:
            return name[: -len(suffix)]
        if not suffix and name in registered:
            return name
    return None


PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "by", "on", "unless", "and",
    "or", "without", "ignoring", "group_left", "group_right", "absent", "time",
    "histogram_quantile", "bool", "offset", "irate", "delta", "changes", "resets",
}


def metric_names(expr):
    """Metric names in a PromQL expression (outside label matchers and strings)."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    expr = re.sub(r"\b(by|on|without|ignoring)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhd]?", n)}


def backend_deployment_rules(env_name, docs):
    deployment = find(docs, "Deployment", "events-backend")
    if not check(len(deployment) == 1, f"{env_name}: no Deployment events-backend"):
        return None
    deployment = deployment[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config.update(find(docs, "ConfigMap", source["configMapRef"]["name"])[0]["data"])
    secret_refs = [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]

    # Secrets: only from a Secret, never a ConfigMap or a literal.
    for config_map in find(docs, "ConfigMap"):
        for key in config_map.get("data", {}):
            check(not SECRET_LIKE.search(key), f"{env_name}: ConfigMap {config_map['metadata']['name']} holds {key}")
    for env in container.get("env", []):
        check(not (SECRET_LIKE.search(env["name"]) and "value" in env), f"{env_name}: {env['name']} is a literal in the Deployment")
    check(secret_refs == ["events-secrets"], f"{env_name}: the backend does not read the Secret events-secrets")
    check(not find(docs, "Secret"), f"{env_name}: a Secret is rendered (secrets are created out of band)")
    check(container["image"] != "events-backend", f"{env_name}: the overlay does not set the image")

    # Probes on the metrics port, which is METRICS_ADDR's.
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    metrics_port = int(config.get("METRICS_ADDR", ":0").rsplit(":", 1)[1])
    check(ports.get("metrics") == metrics_port, f"{env_name}: the port named metrics is not METRICS_ADDR's ({metrics_port})")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        action = container.get(probe, {}).get("httpGet", {})
        check(action.get("path") == path and action.get("port") in ("metrics", metrics_port),
              f"{env_name}: {probe} is not {path} on the metrics port")

    # Stopping: the grace period outlasts the preStop pause, the drain and the shutdown.
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    drain = int(config.get("DRAIN_SECS", 5))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    tail = shutdown_grace()
    check(grace >= pause + drain + tail + MARGIN_SECS,
          f"{env_name}: terminationGracePeriodSeconds {grace} < preStop {pause} + DRAIN_SECS {drain}"
          f" + SHUTDOWN_GRACE {tail} + {MARGIN_SECS}")
    check(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0,
          f"{env_name}: a rollout may drain a pod before its replacement is ready")

    # Sizes and security.
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for what in ("cpu", "memory"):
            check(what in resources.get(kind, {}), f"{env_name}: no {kind}.{what}")
    security = container.get("securityContext", {})
    check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{env_name}: runAsNonRoot is not set")
    check(security.get("readOnlyRootFilesystem") is True, f"{env_name}: the root filesystem is writable")
    check(security.get("allowPrivilegeEscalation") is False, f"{env_name}: privilege escalation allowed")
    check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{env_name}: capabilities not all dropped")

    # The Ingress routes only /api, the stream unbuffered with a long read timeout.
    for ingress in find(docs, "Ingress"):
        annotations = ingress["metadata"].get("annotations", {})
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                check(path["path"].startswith("/api"), f"{env_name}: Ingress {ingress['metadata']['name']} routes {path['path']}")
                if path["path"] == "/api/events":
                    check(annotations.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off",
                          f"{env_name}: the stream's Ingress buffers")
                    check(int(annotations.get("nginx.ingress.kubernetes.io/proxy-read-timeout", 60)) >= 3600,
                          f"{env_name}: the stream's Ingress read timeout is under an hour")
    check(any(p["path"] == "/api/events" for i in find(docs, "Ingress") for r in i["spec"]["rules"] for p in r["http"]["paths"]),
          f"{env_name}: no Ingress path for /api/events")

    # The metrics port is open to Prometheus only.
    policy = find(docs, "NetworkPolicy", "events-backend")
    if check(len(policy) == 1, f"{env_name}: no NetworkPolicy events-backend"):
        for rule in policy[0]["spec"]["ingress"]:
            rule_ports = {p["port"] for p in rule.get("ports", [])}
            if "metrics" in rule_ports or metrics_port in rule_ports:
                check(all("namespaceSelector" in peer for peer in rule["from"]),
                      f"{env_name}: the metrics port is open to this namespace's pods")
    check(len(find(docs, "PodDisruptionBudget")) == 1, f"{env_name}: no PodDisruptionBudget")
    return deployment, config, grace


def main():
    rendered = Path(sys.argv[1])
    registered = registered_metrics()
    check(len(registered) > 10, "could not read the metric names from apps/backend/src/metrics.rs")

    dev = load(rendered / "dev.yaml")
    production = load(rendered / "production.yaml")
    backend_deployment_rules("dev", dev)
    result = backend_deployment_rules("production", production)

    # Production: the autoscaler, not a replica count; no trial Redis.
    check(not find(production, "StatefulSet"), "production: renders a StatefulSet (the trial Redis?)")
    hpa = find(production, "HorizontalPodAutoscaler", "events-backend")
    adapter = yaml.safe_load(Path("deploy/kubernetes/prometheus-adapter/values.yaml").read_text())
    adapter_metrics = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    for rule in adapter["rules"]["custom"]:
        for name in metric_names(rule["seriesQuery"]):
            check(backend_metric(name, registered), f"adapter rule: {name} is not a backend metric")
    if check(len(hpa) == 1 and result is not None, "production: no HorizontalPodAutoscaler events-backend"):
        deployment, config, grace = result
        spec = hpa[0]["spec"]
        check("replicas" not in deployment["spec"], "production: the Deployment sets replicas (the HPA owns them)")
        check(spec["scaleTargetRef"]["name"] == "events-backend", "production: the HPA scales something else")
        pods_metrics = [m["pods"] for m in spec["metrics"] if m["type"] == "Pods"]
        check([m["metric"]["name"] for m in pods_metrics] == ["sse_streams_open"],
              "production: the HPA's first metric is not sse_streams_open")
        check(all(m["metric"]["name"] in adapter_metrics for m in pods_metrics),
              "production: the HPA asks for a metric the Prometheus Adapter rule does not serve")
        check(any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in spec["metrics"]),
              "production: CPU is not the HPA's second metric")
        # One pod of minReplicas draining: the others take its streams, under MAX_STREAMS.
        target = float(pods_metrics[0]["target"]["averageValue"])
        floor = spec["minReplicas"]
        max_streams = int(config["MAX_STREAMS"])
        check(floor >= 2 and target * floor / (floor - 1) < max_streams,
              f"production: at {floor} pods of {target:.0f} streams, one draining overfills the others (MAX_STREAMS {max_streams})")
        down = spec["behavior"]["scaleDown"]
        check(all(p["type"] == "Pods" and p["value"] == 1 and p["periodSeconds"] > grace for p in down["policies"]),
              "production: scale-down removes more than one pod per drain")
        check(down.get("stabilizationWindowSeconds", 300) >= 300, "production: scale-down reacts in under 5 minutes")

    # The example Secret holds placeholders only.
    example = load("deploy/kubernetes/base/secret.example.yaml")[0]
    values = example.get("stringData", {})
    check(set(values) == SECRET_KEYS, f"secret.example.yaml: keys {sorted(values)} are not {sorted(SECRET_KEYS)}")
    check(not example.get("data"), "secret.example.yaml: holds base64 data")
    for key, value in values.items():
        check("<" in value and ">" in value, f"secret.example.yaml: {key} is not a <placeholder>")

    # Alert rules read metrics the backend has.
    rules = yaml.safe_load(Path("deploy/prometheus/alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                if name.startswith("kube_") or name == "up":
                    continue
                check(backend_metric(name, registered), f"alert {rule['alert']}: {name} is not a backend metric")

    if problems:
        for problem in problems:
            print(f"deploy-policy: {problem}", file=sys.stderr)
        sys.exit(1)
    print(f"deploy-policy: {checked} checks passed")


if __name__ == "__main__":
    main()
