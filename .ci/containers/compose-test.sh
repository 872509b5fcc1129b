#!/usr/bin/env bash
# Builds and runs the compose stack under Podman (docker-compose.yml, the backend image
# from apps/backend/Dockerfile, nginx with the repo's nginx.conf) and checks, through
# nginx on its published port, what a deployment depends on:
#   1. a stream on one backend receives an event published through the other;
#   2. a backend container killed: its client resumes on the other and misses nothing;
#   3. the Redis container restarted: histories survive (AOF volume), a resumed client
#      gets the missed events, not a resync;
#   4. `down -v` leaves no container, volume or network of the stack behind.
# Every wait is bounded; the stack is taken down however the test ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
trap 'printf "\033[31m[compose-test] FAILED at line %s: %s\033[0m\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

fail() { printf '\033[31m[compose-test] FAILED: %s\033[0m\n' "$*" >&2; exit 1; }
say() { printf '\033[1m[compose-test]\033[0m %s\n' "$*"; }

command -v podman >/dev/null && command -v podman-compose >/dev/null \
  || fail "needs Podman and podman-compose: bash .ci/setup installs them (see the README's Containers)"
[ -f dist/index.html ] || fail "no web build in dist/: run just web-build first"

PROJECT=events-compose-test
HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$HTTP_PORT"
WORK=$(mktemp -d)
export HTTP_PORT BUILDAH_FORMAT=docker DEV_TOKENS=true \
  JWT_SECRET=compose-test-secret-compose-test-secret PUBLISH_KEY=compose-test-publish-key
compose() { podman-compose -p "$PROJECT" "$@" >>"$WORK/compose.log" 2>&1; }
down() {
  compose down -v || true
  podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
}
cleanup() {
  local status=$?
  if [ $status -ne 0 ]; then
    for c in $(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
      echo "--- logs of $c (last 15 lines)"; podman logs --tail 15 "$c" 2>&1 || true
    done
    echo "--- podman-compose (last 20 lines)"; tail -20 "$WORK/compose.log" || true
  fi
  down
  rm -rf "$WORK"
}
trap cleanup EXIT

# until SECONDS WHAT COMMAND...: runs COMMAND until it succeeds, at most SECONDS.
until_ok() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "$what (not within ${seconds}s)"
    sleep 0.5
  done
}

token() {
  curl -sf -m 5 -X POST "$BASE/api/auth/token" -H 'content-type: application/json' \
    -d "{\"userId\":\"$1\"}" | jq -r .token
}
# publish USER N: publishes {"n": N} to USER through nginx; prints the accepting backend.
# Idempotent per USER and N, so that retrying a publish whose answer was lost (while a
# backend or Redis is away) cannot publish it twice.
publish() {
  curl -sf -m 5 -X POST "$BASE/api/publish" -H "authorization: Bearer $PUBLISH_KEY" \
    -H "idempotency-key: $1-$2" -H 'content-type: application/json' \
    -d "{\"userId\":\"$1\",\"eventType\":\"test.counted\",\"data\":{\"n\":$2}}" | jq -r .serverId
}
# stream TOKEN FILE SECONDS [LAST_EVENT_ID]: reads a stream through nginx into FILE.
stream() {
  local headers=(-H "authorization: Bearer $1")
  [ -n "${4:-}" ] && headers+=(-H "Last-Event-ID: $4")
  curl -sN -m "$3" "${headers[@]}" "$BASE/api/events" >"$2" 2>/dev/null || true
}
opened_server() { grep -m1 -A2 '^event: stream.opened' "$1" | sed -n 's/.*"serverId":"\([^"]*\)".*/\1/p' | head -1; }
opened_id() { grep -m1 -B1 '^event: stream.opened' "$1" | sed -n 's/^id: //p'; }
# The n's of the test.counted events in FILE, in order, space-separated.
counted() { grep -A1 '^event: test.counted' "$1" | sed -n 's/.*"data":{"n":\([0-9]*\)}.*/\1/p' | tr '\n' ' ' | sed 's/ $//'; }

say "base images"
bash .ci/containers/base-images.sh
say "building the backend image and starting the stack on port $HTTP_PORT"
down
started=$SECONDS
compose up -d --build || fail "podman-compose up"
# Build stages left over by earlier builds of the backend image (about 1.3 GB each).
podman image prune -f --filter label=org.events.stage=build >/dev/null 2>&1 || true
for backend in backend-1 backend-2; do
  # nginx alternates between them: within a few tries each has answered.
  until_ok 180 "$backend answers through nginx" \
    bash -c "for i in 1 2 3 4; do curl -sf -m 2 $BASE/healthz | grep -q '\"$backend\"' && exit 0; done; exit 1"
done
until_ok 60 "both backends ready" bash -c \
  "[ \$(podman ps --filter label=io.podman.compose.project=$PROJECT --filter status=running -q | wc -l) -eq 4 ]"
say "stack up in $((SECONDS - started)) s; image: $(podman image inspect --format '{{.Size}}' "${PROJECT}_backend-1" | awk '{printf "%.0f MB", $1/1000000}')"
curl -sf -m 5 "$BASE/" | grep -qi '<html' || fail "nginx serves the web build"
[ "$(curl -s -o /dev/null -w '%{http_code}' -m 5 "$BASE/metrics")" = 404 ] || fail "/metrics is not public"

# 1. Across backends.
alice=$(token alice)
stream "$alice" "$WORK/alice" 15 &
reader=$!
until_ok 20 "alice's stream opens" grep -q '^event: stream.opened' "$WORK/alice"
holder=$(opened_server "$WORK/alice")
# Each attempt publishes a new n, so the one that crossed is told apart from the others.
for attempt in $(seq 1 10); do
  accepted_by=$(publish alice "$attempt")
  [ "$accepted_by" != "$holder" ] && break
  [ "$attempt" -lt 10 ] || fail "no publish reached the other backend"
done
until_ok 10 "alice's stream on $holder gets the event $accepted_by accepted" \
  grep -q "\"n\":$attempt}" "$WORK/alice"
kill $reader 2>/dev/null || true
say "1. an event published through $accepted_by reached the stream on $holder"

# 2. A backend killed: its client resumes through nginx on the other, missing nothing.
bob=$(token bob)
stream "$bob" "$WORK/bob" 30 &
reader=$!
until_ok 20 "bob's stream opens" grep -q '^event: stream.opened' "$WORK/bob"
victim=$(opened_server "$WORK/bob")
last_id=$(opened_id "$WORK/bob" || true)
podman kill "${PROJECT}_${victim}_1" >/dev/null
for n in 1 2 3; do
  until_ok 20 "publish $n with $victim down" publish bob "$n"
done
stream "$bob" "$WORK/bob-resumed" 5 "$last_id"
kill $reader 2>/dev/null || true
[ "$(counted "$WORK/bob-resumed")" = "1 2 3" ] \
  || fail "bob resumed with: $(counted "$WORK/bob-resumed") (wanted 1 2 3)"
! grep -q '^event: stream.resync' "$WORK/bob-resumed" || fail "bob was told to resync"
say "2. $victim killed: the client resumed on the other backend with 1 2 3, nothing lost"

# 3. Redis restarted: the history is in its AOF volume.
carol=$(token carol)
stream "$carol" "$WORK/carol" 5
cursor=$(opened_id "$WORK/carol" || true)
[ -n "$cursor" ] || fail "carol's stream gave no cursor: $(head -c 300 "$WORK/carol")"
for n in 1 2; do publish carol "$n" >/dev/null || fail "publish to carol"; done
sleep 1.5   # appendfsync everysec
podman restart "${PROJECT}_redis_1" >/dev/null
until_ok 60 "publishing works again after the Redis restart" publish carol 3
stream "$carol" "$WORK/carol-resumed" 5 "$cursor"
[ "$(counted "$WORK/carol-resumed")" = "1 2 3" ] \
  || fail "carol resumed with: $(counted "$WORK/carol-resumed") (wanted 1 2 3)"
! grep -q '^event: stream.resync' "$WORK/carol-resumed" || fail "carol was told to resync"
say "3. Redis restarted: the resumed client got 1 2 3 from the persisted history"

# 4. Down leaves nothing.
down
left=$(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" -q | wc -l)
[ "$left" -eq 0 ] || fail "$left containers left after down -v"
! podman volume exists "${PROJECT}_redis-data" || fail "the Redis volume is left after down -v"
! podman network exists "${PROJECT}_default" || fail "the network is left after down"
say "4. down -v left no container, volume or network"
echo "4 passed, 0 failed"
