#!/usr/bin/env bash
# Checks the deployment files (deploy/), as `just deploy-check` and `just lint` run it:
#   1. each kustomization renders (kustomize: `kubectl kustomize`, or the standalone
#      `kustomize`), into target/deploy/;
#   2. every resource rendered, and the example Secret, validates against the schemas
#      of Kubernetes $KUBERNETES_VERSION (kubernetes-validate --strict: unknown or
#      misspelled fields fail); custom resources (the ServiceMonitor) have no schema
#      there and are only reported;
#   3. the deployment's own rules (.ci/deploy-policy.py): secrets only in the Secret,
#      probes on the metrics port, a grace period that outlasts the drain, the
#      autoscaler's metric served by the adapter rule, alert rules on real metrics...;
#   4. promtool check rules and the rules' unit tests (deploy/prometheus/).
set -euo pipefail
cd "$(dirname "$0")/.."

# The newest Kubernetes whose schemas kubernetes-validate bundles (1.37.0 ships
# 1.25-1.37); raise it with the tool.
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.37.0}

fail() { printf '\033[31m[deploy-check] FAILED: %s\033[0m\n' "$*" >&2; exit 1; }
say() { printf '\033[1m[deploy-check]\033[0m %s\n' "$*"; }

if command -v kustomize >/dev/null; then
  render() { kustomize build "$1"; }
elif kubectl kustomize --help >/dev/null 2>&1; then
  render() { kubectl kustomize "$1"; }
else
  fail "needs kustomize or kubectl: bash .ci/setup installs it"
fi
python3 -m kubernetes_validate --version >/dev/null 2>&1 || fail "needs kubernetes-validate: bash .ci/setup installs it"
command -v promtool >/dev/null || fail "needs promtool: bash .ci/setup installs it"

out=target/deploy
rm -rf "$out" && mkdir -p "$out"

# 1. Render.
declare -A sources=(
  [dev]=deploy/kubernetes/overlays/dev
  [production]=deploy/kubernetes/overlays/production
  [base]=deploy/kubernetes/base
  [redis-trial]=deploy/kubernetes/redis-trial
  [monitoring]=deploy/kubernetes/monitoring
)
for name in dev production base redis-trial monitoring; do
  render "${sources[$name]}" >"$out/$name.yaml" 2>"$out/$name.err" \
    || { cat "$out/$name.err" >&2; fail "${sources[$name]} does not render"; }
done
say "1. rendered ${#sources[@]} kustomizations into $out/"

# 2. Schemas.
files=("$out"/{dev,production,base,redis-trial,monitoring}.yaml deploy/kubernetes/base/secret.example.yaml)
if ! python3 -m kubernetes_validate --strict --quiet -k "$KUBERNETES_VERSION" "${files[@]}" >"$out/validate.log" 2>&1; then
  grep -v '^WARN' "$out/validate.log" >&2 || true
  fail "resources do not validate against Kubernetes $KUBERNETES_VERSION"
fi
# Warnings are only acceptable for the custom resources we know have no schema here.
if grep '^WARN' "$out/validate.log" | grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/v1' >&2; then
  fail "unexpected warnings from kubernetes-validate"
fi
resources=$(cat "${files[@]}" | grep -c '^kind:')
say "2. $resources resources valid against Kubernetes $KUBERNETES_VERSION (--strict; the ServiceMonitor, a custom resource, has no schema to check)"

# 3. The deployment's own rules.
python3 .ci/deploy-policy.py "$out" | sed 's/^/    /'
say "3. policy checks passed"

# 4. Alert rules.
promtool check rules deploy/prometheus/alerts.yaml >"$out/promtool.log" 2>&1 \
  || { cat "$out/promtool.log" >&2; fail "promtool check rules"; }
promtool test rules deploy/prometheus/alerts.test.yaml >>"$out/promtool.log" 2>&1 \
  || { cat "$out/promtool.log" >&2; fail "promtool test rules"; }
rules=$(grep -o '[0-9]* rules found' "$out/promtool.log")
say "4. alert rules: $rules by promtool, and their unit tests pass"
