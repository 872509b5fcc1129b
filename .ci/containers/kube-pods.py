#!/usr/bin/env python3
"""Turns a rendered overlay (kubectl kustomize deploy/kubernetes/overlays/dev) into
files that `podman kube play` runs, for .ci/containers/kube-test.sh.

What Podman plays is the overlay's own workloads, container for container: the same
image, command, environment (ConfigMap and Secret references), probes, lifecycle,
resources and security context. Only what Podman cannot take is changed, each change
listed here and printed when the script runs:

- The backend Deployment is played as two Deployments of one replica each
  (events-backend-a, events-backend-b), so that one pod can be replaced alone, as
  Kubernetes replaces a pod; two replicas of one Deployment would be replaced together.
- `ports` are dropped from every container: Podman publishes a bare containerPort on
  the host, so two backends would clash on 3000 and 9100. Pods reach each other over
  the Podman network by pod name. Probes that named a port get its number.
- The StatefulSet (Podman plays Pods, Deployments and PersistentVolumeClaims) becomes
  a Deployment of the same pod template, its volumeClaimTemplates PersistentVolumeClaims.
- Services, Ingresses, PodDisruptionBudgets, NetworkPolicies, HorizontalPodAutoscalers
  and the Namespace have no Podman counterpart and are left out; nginx with the repo's
  nginx.conf stands in for the Service and the ingress controller (kube-test.sh).
- With --run-as-image-user: a pod securityContext's runAsUser/runAsGroup/fsGroup are
  replaced by the given uid:gid for one workload (the stand-in Redis image, built
  locally when no registry answers, has its redis user at 100:101, upstream's at
  999:1000, and Podman does not apply fsGroup to volumes).

Writes OUTDIR/<name>.yaml for each workload (its ConfigMaps included), and prints the
names.
"""

import argparse
import copy
import sys

import yaml

LEFT_OUT = {
    "Namespace",
    "Service",
    "Ingress",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "HorizontalPodAutoscaler",
}


def note(text):
    print(f"[kube-pods] {text}", file=sys.stderr)


def strip_ports(pod_spec, workload):
    for container in pod_spec.get("containers", []):
        named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        if container.pop("ports", None):
            note(f"{workload}/{container['name']}: ports dropped (Podman would publish them on the host)")
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(probe_name)
            if not probe:
                continue
            for kind in ("httpGet", "tcpSocket"):
                action = probe.get(kind)
                if action and isinstance(action.get("port"), str):
                    action["port"] = named[action["port"]]


def config_maps_used(pod_spec, config_maps):
    names = set()
    for container in pod_spec.get("containers", []):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                names.add(source["configMapRef"]["name"])
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                names.add(ref["name"])
    return [config_maps[name] for name in sorted(names)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("outdir")
    parser.add_argument("--run-as-image-user", action="append", default=[], metavar="WORKLOAD=UID:GID")
    args = parser.parse_args()
    run_as = dict(item.split("=", 1) for item in args.run_as_image_user)

    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    workloads = []  # (file name, [documents])
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in LEFT_OUT:
            note(f"{kind}/{name}: left out (no Podman counterpart)")
            continue
        if kind == "ConfigMap":
            continue
        if kind == "Deployment" and name == "events-backend":
            for suffix in ("a", "b"):
                copy_ = copy.deepcopy(doc)
                copy_["metadata"]["name"] = f"{name}-{suffix}"
                copy_["spec"]["replicas"] = 1
                workloads.append((f"{name}-{suffix}", [copy_]))
            note(f"Deployment/{name} (replicas {doc['spec'].get('replicas', 1)}): played as {name}-a and {name}-b, one replica each")
            continue
        if kind == "StatefulSet":
            spec = doc["spec"]
            deployment = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": copy.deepcopy(doc["metadata"]),
                "spec": {
                    "replicas": spec.get("replicas", 1),
                    "selector": spec["selector"],
                    "template": copy.deepcopy(spec["template"]),
                },
            }
            claims = []
            volumes = deployment["spec"]["template"]["spec"].setdefault("volumes", [])
            for template in spec.get("volumeClaimTemplates", []):
                claim = f"events-kube-test-{template['metadata']['name']}-{name}-0"
                claims.append({
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim},
                    "spec": copy.deepcopy(template["spec"]),
                })
                volumes.append({"name": template["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}})
            note(f"StatefulSet/{name}: played as a Deployment, its volume claims as PersistentVolumeClaims {[c['metadata']['name'] for c in claims]}")
            workloads.append((name, claims + [deployment]))
            continue
        if kind == "Deployment":
            workloads.append((name, [doc]))
            continue
        sys.exit(f"kube-pods.py: no rule for {kind}/{name}")

    for file_name, documents in workloads:
        out = []
        for doc in documents:
            if doc["kind"] != "Deployment":
                out.append(doc)
                continue
            pod_spec = doc["spec"]["template"]["spec"]
            strip_ports(pod_spec, file_name)
            base_name = file_name.rsplit("-", 1)[0] if file_name.startswith("events-backend-") else file_name
            if base_name in run_as:
                uid, gid = run_as[base_name].split(":")
                context = pod_spec.setdefault("securityContext", {})
                note(f"{file_name}: runs as the image's user {uid}:{gid} (was {context.get('runAsUser')}:{context.get('runAsGroup')})")
                context["runAsUser"], context["runAsGroup"] = int(uid), int(gid)
                context.pop("fsGroup", None)
            for config_map in config_maps_used(pod_spec, config_maps):
                out.append(config_map)
            out.append(doc)
        with open(f"{args.outdir}/{file_name}.yaml", "w") as f:
            yaml.safe_dump_all(out, f, sort_keys=False)
        print(file_name)


if __name__ == "__main__":
    main()
