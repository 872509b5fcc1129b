#!/usr/bin/env bash
# Plays the Kubernetes manifests under Podman (`podman kube play`) and checks a backend
# pod's replacement, as a rollout does it, through nginx:
#   1. the dev overlay (deploy/kubernetes/overlays/dev), rendered with kustomize, runs:
#      Redis and two backend pods from its own workloads (same image, environment,
#      probes, security context; .ci/containers/kube-pods.py says what Podman needs
#      changed), the Secret from a Podman secret, nginx with the repo's nginx.conf in
#      front (standing in for the Service and the ingress controller);
#   2. the probes the manifests point at answer on the metrics port (METRICS_ADDR),
#      /metrics is not served on the public port, and nginx hides /readyz and /metrics;
#   3. a stream through nginx; the pod holding it is replaced as the kubelet does it
#      (SIGTERM, the manifest's grace period to drain and exit, then a new pod of the same
#      name, `kube play --replace`) while events are published; the
#      client resumes from its Last-Event-ID as a browser does and gets every event once,
#      in order, with no resync; the new pod becomes ready and serves through nginx;
#   4. everything is taken down: no pod, volume, secret or network is left.
# KUBE_TEST_IMAGE=<image>: use that image (built from this tree) instead of building one.
# Every wait is bounded; the pods are taken down however the test ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
trap 'printf "\033[31m[kube-test] FAILED at line %s: %s\033[0m\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

fail() { printf '\033[31m[kube-test] FAILED: %s\033[0m\n' "$*" >&2; exit 1; }
say() { printf '\033[1m[kube-test]\033[0m %s\n' "$*"; }

command -v podman >/dev/null || fail "needs Podman: bash .ci/setup installs it"
command -v catatonit >/dev/null || fail "podman kube play needs catatonit: bash .ci/setup installs it"
if command -v kustomize >/dev/null; then
  kustomize() { command kustomize build "$@"; }
elif kubectl kustomize --help >/dev/null 2>&1; then
  kustomize() { kubectl kustomize "$@"; }
else
  fail "needs kustomize (or kubectl kustomize): bash .ci/setup installs it"
fi

NAME=events-kube-test
NETWORK=$NAME
SECRET=events-secrets   # the name the Deployment's secretRef gives
HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$HTTP_PORT"
PUBLISH_KEY=kube-test-publish-key
WORK=$(mktemp -d)
started=$SECONDS

down() {
  for file in nginx events-backend-a events-backend-b redis; do
    [ -f "$WORK/$file.yaml" ] && podman kube down "$WORK/$file.yaml" >/dev/null 2>&1 || true
  done
  podman volume rm -f "$NAME-data-redis-0" >/dev/null 2>&1 || true
  podman secret rm "$SECRET" >/dev/null 2>&1 || true
  podman network rm -f "$NETWORK" >/dev/null 2>&1 || true
}
cleanup() {
  local status=$?
  [ -n "${client:-}" ] && kill "$client" 2>/dev/null || true
  if [ $status -ne 0 ]; then
    for c in redis-pod-0-redis events-backend-a-pod-0-backend events-backend-b-pod-0-backend nginx-kube-test-nginx; do
      podman container exists "$c" 2>/dev/null || continue
      echo "--- logs of $c (last 15 lines)"; podman logs --tail 15 "$c" 2>&1 || true
    done
  fi
  down
  rm -rf "$WORK"
}
trap cleanup EXIT


# until_ok SECONDS WHAT COMMAND...: runs COMMAND until it succeeds, at most SECONDS.
until_ok() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "$what (not within ${seconds}s)"
    sleep 0.3
  done
}

# in_pod CONTAINER PORT PATH: GET http://127.0.0.1:PORT/PATH inside the container (the
# image has bash but no curl), as the kubelet's probe would; prints the response.
in_pod() {
  podman exec "$1" bash -c "exec 3<>/dev/tcp/127.0.0.1/$2 && printf 'GET $3 HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 && cat <&3"
}
# probe CONTAINER KIND: the manifest's KIND probe (readinessProbe, livenessProbe,
# startupProbe) of the backend, run inside CONTAINER; succeeds on a 200.
probe() {
  local port path
  read -r port path < <(probe_target "$2")
  in_pod "$1" "$port" "$path" | head -1 | grep -q ' 200 '
}
probe_target() {
  python3 - "$WORK/events-backend-a.yaml" "$1" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"]
probe = docs[0]["spec"]["template"]["spec"]["containers"][0][sys.argv[2]]["httpGet"]
print(probe["port"], probe["path"])
EOF
}

token() {
  curl -sf -m 5 -X POST "$BASE/api/auth/token" -H 'content-type: application/json' \
    -d "{\"userId\":\"$1\"}" | jq -r .token
}
# publish USER N: publishes {"n": N} to USER through nginx, idempotently (a retry after a
# lost answer publishes nothing twice); prints the accepting backend.
publish() {
  curl -sf -m 5 -X POST "$BASE/api/publish" -H "authorization: Bearer $PUBLISH_KEY" \
    -H "idempotency-key: $1-$2" -H 'content-type: application/json' \
    -d "{\"userId\":\"$1\",\"eventType\":\"test.counted\",\"data\":{\"n\":$2}}" | jq -r .serverId
}
publish_until_accepted() { until_ok 30 "publish $2 to $1" publish "$1" "$2"; }
# A browser's EventSource through nginx: reads the stream into FILE, and whenever it
# ends, reconnects after 0.5 s with the last id: seen as Last-Event-ID; until STOPFILE.
follow() {
  local token=$1 file=$2 stopfile=$3 last headers
  : >"$file"
  until [ -e "$stopfile" ]; do
    headers=(-H "authorization: Bearer $token")
    last=$(sed -n 's/^id: //p' "$file" | tail -1)
    [ -n "$last" ] && headers+=(-H "Last-Event-ID: $last")
    echo ": connection" >>"$file"
    curl -sN -m 60 "${headers[@]}" "$BASE/api/events" >>"$file" 2>/dev/null || true
    sleep 0.5
  done
}
counted() { grep -A1 '^event: test.counted' "$1" | sed -n 's/.*"data":{"n":\([0-9]*\)}.*/\1/p' | tr '\n' ' ' | sed 's/ $//'; }
servers_opened() { grep -A2 '^event: stream.opened' "$1" | sed -n 's/.*"serverId":"\([^"]*\)".*/\1/p' | tr '\n' ' ' | sed 's/ $//'; }

say "base images"
bash .ci/containers/base-images.sh

# The dev overlay, as `kubectl apply -k` would send it.
kustomize deploy/kubernetes/overlays/dev >"$WORK/dev.yaml"
IMAGE=$(python3 -c '
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "events-backend":
        print(d["spec"]["template"]["spec"]["containers"][0]["image"])' "$WORK/dev.yaml")
[[ "$IMAGE" == localhost/* ]] || fail "the dev overlay's image $IMAGE is not a local one"
if [ -n "${KUBE_TEST_IMAGE:-}" ]; then
  # An image built from this tree a moment ago (`just test` passes compose-test's).
  podman image exists "$KUBE_TEST_IMAGE" || fail "KUBE_TEST_IMAGE=$KUBE_TEST_IMAGE does not exist"
  say "using $KUBE_TEST_IMAGE (built from this tree) as $IMAGE"
  podman tag "$KUBE_TEST_IMAGE" "$IMAGE"
else
  say "building $IMAGE (apps/backend/Dockerfile, as compose-test builds it)"
  built=$SECONDS
  # The build stage is kept (compose-test prunes it), so that the next build of an
  # unchanged tree takes its layers from the cache.
  BUILDAH_FORMAT=docker podman build -q -t "$IMAGE" -f apps/backend/Dockerfile . >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; fail "podman build"; }
  say "image ready in $((SECONDS - built)) s"
fi

# The stand-in Redis image (no registry here) has its redis user at another uid than
# upstream's: run it as the image's own user, which owns /data, as upstream's does.
redis_image=$(grep -m1 'image: docker.io/library/redis' "$WORK/dev.yaml" | awk '{print $2}')
data_owner=$(podman run --rm --entrypoint stat "$redis_image" -c %u:%g /data)
run_as=()
[ "$data_owner" = 999:1000 ] || run_as=(--run-as-image-user "redis=$data_owner")
python3 .ci/containers/kube-pods.py "$WORK/dev.yaml" "$WORK" "${run_as[@]}" >/dev/null 2>"$WORK/kube-pods.log" \
  || { cat "$WORK/kube-pods.log"; fail "kube-pods.py"; }
sed 's/^/  /' "$WORK/kube-pods.log"

# nginx with the repo's nginx.conf, as the compose stack runs it: the ingress
# controller's stand-in, the one port published (on loopback only).
cat >"$WORK/nginx.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: nginx-kube-test
spec:
  containers:
    - name: nginx
      image: docker.io/library/nginx:1.27-alpine
      ports:
        - containerPort: 8080
          hostPort: $HTTP_PORT
          hostIP: 127.0.0.1
      env:
        - {name: BACKEND_1, value: "events-backend-a-pod-0:3000"}
        - {name: BACKEND_2, value: "events-backend-b-pod-0:3000"}
        - {name: NGINX_PORT, value: "8080"}
        - {name: WEB_ROOT, value: /usr/share/nginx/html}
        - {name: NGINX_RUN_DIR, value: /tmp}
        - {name: NGINX_ENVSUBST_OUTPUT_DIR, value: /etc/nginx}
        - {name: NGINX_ENVSUBST_FILTER, value: "^(BACKEND_1|BACKEND_2|NGINX_PORT|WEB_ROOT|NGINX_RUN_DIR)\$"}
      volumeMounts:
        - {name: conf, mountPath: /etc/nginx/templates/nginx.conf.template, readOnly: true}
  volumes:
    - name: conf
      hostPath: {path: $PWD/nginx.conf, type: File}
EOF

say "1. playing the dev overlay's pods (Redis, events-backend-a, events-backend-b) and nginx on port $HTTP_PORT"
down
podman network create "$NETWORK" >/dev/null
# The Secret of base/secret.example.yaml, as a Podman secret: {"KEY": "<base64>"}.
python3 -c '
import base64, json, sys
values = {"JWT_SECRET": "kube-test-secret-kube-test-secret-0123456789",
          "PUBLISH_KEY": sys.argv[1], "REDIS_URL": "redis://redis-pod-0:6379"}
print(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in values.items()}))' "$PUBLISH_KEY" \
  >"$WORK/secret.json"
podman secret create "$SECRET" "$WORK/secret.json" >/dev/null
rm -f "$WORK/secret.json"
play() { podman kube play --network "$NETWORK" "$@" >>"$WORK/play.log" 2>&1 || { tail -20 "$WORK/play.log"; fail "kube play $*"; }; }
play "$WORK/redis.yaml"
until_ok 30 "Redis answers" podman exec redis-pod-0-redis redis-cli ping
play "$WORK/events-backend-a.yaml"
play "$WORK/events-backend-b.yaml"
for pod in events-backend-a-pod-0 events-backend-b-pod-0; do
  until_ok 30 "$pod passes its startup probe" probe "$pod-backend" startupProbe
  until_ok 30 "$pod passes its readiness probe" probe "$pod-backend" readinessProbe
  probe "$pod-backend" livenessProbe || fail "$pod fails its liveness probe"
done
play "$WORK/nginx.yaml"
for pod in events-backend-a-pod-0 events-backend-b-pod-0; do
  until_ok 30 "$pod answers through nginx" \
    bash -c "for i in 1 2 3 4; do curl -sf -m 2 $BASE/healthz | grep -q '\"$pod\"' && exit 0; done; exit 1"
done
say "   up in $((SECONDS - started)) s (image build included); SERVER_ID is the pod's name"

# 2. Probes and internal routes.
in_pod events-backend-a-pod-0-backend 9100 /metrics | grep -q '^# TYPE sse_streams_open gauge' \
  || fail "/metrics on the metrics port"
in_pod events-backend-a-pod-0-backend 3000 /metrics | head -1 | grep -q ' 404 ' \
  || fail "/metrics is served on the public port"
for path in /metrics /readyz; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -m 5 "$BASE$path")" = 404 ] || fail "nginx serves $path"
done
[ "$(podman inspect events-backend-a-pod-0-backend --format '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}')" = "65534:65534 true" ] \
  || fail "the backend runs as root or on a writable root filesystem"
say "2. probes answer on the metrics port; /metrics only there; nginx hides /readyz and /metrics; non-root, read-only root"

# 3. A pod replaced under a stream.
dana=$(token dana)
[ -n "$dana" ] && [ "$dana" != null ] || fail "no token"
follow "$dana" "$WORK/dana" "$WORK/stop" &
client=$!
until_ok 20 "dana's stream opens" grep -q '^event: stream.opened' "$WORK/dana"
holder=$(servers_opened "$WORK/dana")
case $holder in
  events-backend-a-pod-0) file=events-backend-a ;;
  events-backend-b-pod-0) file=events-backend-b ;;
  *) fail "the stream opened on '$holder'" ;;
esac
[ "$(in_pod "$holder-backend" 9100 /metrics | awk '/^sse_streams_open / {print $2}')" = 1 ] \
  || fail "sse_streams_open of $holder (the autoscaler's metric) does not count the stream"
for n in 1 2 3 4 5; do publish_until_accepted dana $n; done
until_ok 10 "events 1-5 on the stream" grep -q '"n":5}' "$WORK/dana"
# The pod is replaced as the kubelet replaces one: SIGTERM to its container, with the
# manifest's terminationGracePeriodSeconds to drain and exit while the pod's network
# stays (`podman pod stop` would take the network down at once, under the drain), then
# a new pod of the same name (`kube play --replace`). Podman runs no preStop hook.
grace=$(python3 -c '
import sys, yaml
d = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"][0]
print(d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])' "$WORK/$file.yaml")
replaced=$SECONDS
(stop_started=$SECONDS \
  && podman stop -t "$grace" "$holder-backend" >/dev/null 2>&1 \
  && echo $((SECONDS - stop_started)) >"$WORK/old-pod.stop-secs" \
  && podman logs "$holder-backend" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >"$WORK/old-pod.log" \
  && podman inspect --format '{{.State.ExitCode}}' "$holder-backend" >"$WORK/old-pod.exit" \
  && podman inspect --format '{{.Id}}' "$holder-backend" >"$WORK/old-pod.id" \
  && podman kube play --replace --network "$NETWORK" "$WORK/$file.yaml" >>"$WORK/play.log" 2>&1) &
replacer=$!
# Events keep coming while the pod drains, is gone, and comes back.
n=5
while kill -0 $replacer 2>/dev/null || [ $n -lt 15 ]; do
  n=$((n + 1))
  publish_until_accepted dana $n
  sleep 0.3
  [ $n -lt 100 ] || fail "the replacement did not end"
done
wait $replacer || { tail -20 "$WORK/play.log"; fail "pod stop and kube play --replace"; }
new_id=$(podman inspect --format '{{.Id}}' "$holder-backend")
[ "$(cat "$WORK/old-pod.exit")" != "" ] && [ "$new_id" != "$(cat "$WORK/old-pod.id")" ] || fail "$holder was not replaced"
# The old pod drained its stream and exited by itself (status 0), within the grace period.
grep -q 'draining streams.*streams=1' "$WORK/old-pod.log" && grep -q 'stopped' "$WORK/old-pod.log" \
  && [ "$(cat "$WORK/old-pod.exit")" = 0 ] \
  || { grep -v "presence sweep failed" "$WORK/old-pod.log" | tail -25; fail "the old $holder did not drain its stream and exit 0 (status $(cat "$WORK/old-pod.exit"))"; }
until_ok 30 "the new $holder passes its readiness probe" probe "$holder-backend" readinessProbe
say "   $holder replaced in $((SECONDS - replaced)) s while events 6-$n were published: on SIGTERM it drained and exited 0 in $(cat "$WORK/old-pod.stop-secs") s (grace ${grace} s), and a new pod took its name"
for i in 1 2 3 4 5; do publish_until_accepted dana $((n + i)); done
n=$((n + 5))
until_ok 30 "event $n reaches the resumed stream" grep -q "\"n\":$n}" "$WORK/dana"
touch "$WORK/stop"
kill $client 2>/dev/null || true
wait $client 2>/dev/null || true
client=
want=$(seq -s ' ' 1 $n)
[ "$(counted "$WORK/dana")" = "$want" ] \
  || fail "dana got: $(counted "$WORK/dana") (wanted $want)"
! grep -q '^event: stream.resync' "$WORK/dana" || fail "dana was told to resync"
connections=$(grep -c '^: connection' "$WORK/dana")
[ "$connections" -ge 2 ] || fail "the stream was never closed by the replacement"
say "3. $holder replaced under the stream: it resumed ($connections connections, on: $(servers_opened "$WORK/dana")) with 1..$n, each once, in order, no resync"

# The replaced pod serves again: nginx resolves its upstreams at start (the ingress
# controller follows the endpoints instead), so start a new one, then each pod answers.
play --replace "$WORK/nginx.yaml"
for pod in events-backend-a-pod-0 events-backend-b-pod-0; do
  until_ok 30 "$pod answers through nginx after the replacement" \
    bash -c "for i in 1 2 3 4; do curl -sf -m 2 $BASE/healthz | grep -q '\"$pod\"' && exit 0; done; exit 1"
done
say "   the new $holder answers through nginx"

# 4. Down leaves nothing.
down
for file in nginx events-backend-a events-backend-b redis; do rm -f "$WORK/$file.yaml"; done
left=$(podman pod ps -q --filter name='^(redis|events-backend-[ab])-pod-0$|^nginx-kube-test$' | wc -l)
[ "$left" -eq 0 ] || fail "$left pods left after kube down"
! podman volume exists "$NAME-data-redis-0" || fail "the Redis volume is left"
! podman secret inspect "$SECRET" >/dev/null 2>&1 || fail "the secret is left"
! podman network exists "$NETWORK" || fail "the network is left"
say "4. kube down left no pod, volume, secret or network ($((SECONDS - started)) s in all)"
echo "4 passed, 0 failed"
