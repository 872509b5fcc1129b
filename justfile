set shell := ["bash", "-euo", "pipefail", "-c"]

# Ports of the local topology.
redis_port := "6380"
cluster_ports := "7001 7002 7003 7004 7005 7006"
backend_1_port := "3000"
backend_2_port := "3002"
web_port := "3001"
nginx_port := "8080"
# Where trunk serve writes its build, auto-reload script included (dist/ is the release build's).
serve_dist := "target/dev/serve-dist"

# List the recipes.
default:
    @just --list

# Install what is missing (Redis, nginx, Chromium, wasm target, trunk, wasm-bindgen-cli).
setup:
    @bash .ci/setup

# Run every test: unit and integration (real Redis), the browser end-to-end tests, the
# compose stack in containers under Podman, then the Kubernetes manifests under Podman
# (on the backend image compose-test has just built from this tree).
test: && e2e compose-test (kube-test "localhost/events-compose-test_backend-1")
    cargo test --workspace

# The web client's release build, into dist/.
web-build:
    trunk build --release

# End-to-end tests of the web client in headless Chromium (screenshots in target/e2e/).
e2e: web-build
    cargo build -p backend
    [ -d apps/web/e2e/node_modules/playwright-core ] || npm ci --prefix apps/web/e2e --no-audit --no-fund
    node apps/web/e2e/e2e.mjs

# The compose stack for real, under Podman: base images (pulled, or local stand-ins when no
# registry answers), the backend image from its Dockerfile, then streams, a killed backend
# and a restarted Redis through nginx. The first run on a machine builds the images
# (about 12 minutes); later runs reuse them and recompile only the workspace (2 minutes).
compose-test: web-build
    bash .ci/containers/compose-test.sh

# Redis, two backend pods and nginx from the dev overlay; a stream through nginx, its
# backend pod replaced (SIGTERM, drain, a new pod), the stream resumed with nothing lost.
# IMAGE: a backend image built from this tree; empty: build it (apps/backend/Dockerfile,
# a few minutes when the sources changed).
# The Kubernetes manifests played under Podman (podman kube play).
kube-test image="":
    KUBE_TEST_IMAGE="{{image}}" bash .ci/containers/kube-test.sh

# Every kustomization rendered and validated against the Kubernetes API schemas, the
# deployment's own rules (.ci/deploy-policy.py), the alert rules and their unit tests.
# Check the deployment files (deploy/).
deploy-check:
    bash .ci/deploy-check.sh

# Formatting and lints, as CI checks them, and the deployment files' checks.
lint: deploy-check
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# nginx serves the release build in dist/; trunk serve rebuilds on change into
# target/dev/serve-dist/. Ctrl-C, or a SIGINT or SIGTERM to just alone (an IDE's stop
# button), stops all. `just dev cluster` (or `just dev-cluster`) runs a Redis Cluster instead.
# Run it all locally: Redis, two backends, nginx (8080), trunk serve (3001).
dev redis="single": setup web-build
    #!/usr/bin/env bash
    set -euo pipefail
    # Every process stops with the first, or when just is told to stop (see the file).
    source .ci/dev-supervise.sh
    dev_watch_just &
    cargo build -p backend
    mkdir -p target/dev/nginx
    prefix() { sed -u "s/^/$(printf '\033[%sm%-9s\033[0m ' "$1" "$2")/"; }
    if [ "{{redis}}" = cluster ]; then
        # Three masters with a replica each, a new cluster every time.
        mkdir -p target/dev/cluster && rm -f target/dev/cluster/nodes-*.conf
        nodes=()
        for port in {{cluster_ports}}; do
            redis-server --port $port --bind 127.0.0.1 --save "" --appendonly no \
                --cluster-enabled yes --cluster-config-file nodes-$port.conf \
                --cluster-node-timeout 2000 --repl-diskless-sync-delay 0 \
                --dir target/dev/cluster 2>&1 | prefix 33 redis-$port &
            nodes+=(127.0.0.1:$port)
        done
        for port in {{cluster_ports}}; do
            until redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.1; done
        done
        redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
        for port in {{cluster_ports}}; do
            until redis-cli -p $port cluster info | grep -q cluster_state:ok; do sleep 0.2; done
        done
        seeds=$(printf '&node=%s' "${nodes[@]:1:2}")
        export REDIS_URL="redis-cluster://${nodes[0]}?${seeds:1}" PUBLISH_REPLICAS=1
    else
        redis-server --port {{redis_port}} --bind 127.0.0.1 --save "" --appendonly no \
            --dir target/dev 2>&1 | prefix 33 redis &
        until redis-cli -p {{redis_port}} ping >/dev/null 2>&1; do sleep 0.1; done
        export REDIS_URL=redis://127.0.0.1:{{redis_port}}
    fi
    # Development only: anyone may mint a token for any user (the backends log it loudly).
    export PUBLISH_KEY=${PUBLISH_KEY:-dev-publish-key} DEV_TOKENS=true
    # Other services may still PUBLISH to the original design's user-events channel.
    export LEGACY_CHANNELS=true
    # The page's rooms say who arrives and leaves.
    export PRESENCE_EVENTS='room:*'
    PORT={{backend_1_port}} SERVER_ID=backend-1 target/debug/backend 2>&1 | prefix 36 backend-1 &
    PORT={{backend_2_port}} SERVER_ID=backend-2 target/debug/backend 2>&1 | prefix 35 backend-2 &
    # The repo's nginx.conf, rendered for this machine.
    sed -e 's|${BACKEND_1}|127.0.0.1:{{backend_1_port}}|g' -e 's|${BACKEND_2}|127.0.0.1:{{backend_2_port}}|g' \
        -e 's|${NGINX_PORT}|{{nginx_port}}|g' -e "s|\${WEB_ROOT}|$PWD/dist|g" \
        -e "s|\${NGINX_RUN_DIR}|$PWD/target/dev/nginx|g" nginx.conf > target/dev/nginx/nginx.conf
    nginx -c "$PWD/target/dev/nginx/nginx.conf" -g 'daemon off;' 2>&1 | prefix 34 nginx &
    # Its own output directory: nginx keeps serving the release build, without the
    # auto-reload script that trunk serve adds (which nginx's CSP would refuse).
    trunk serve --port {{web_port}} --dist {{serve_dist}} 2>&1 | prefix 32 web &
    for port in {{backend_1_port}} {{backend_2_port}}; do
        until curl -fs http://127.0.0.1:$port/healthz >/dev/null; do sleep 0.2; done
    done
    until curl -fs http://127.0.0.1:{{nginx_port}}/ >/dev/null; do sleep 0.2; done
    until curl -fs http://127.0.0.1:{{web_port}}/ >/dev/null; do sleep 0.5; done
    printf '\n  open       http://127.0.0.1:{{nginx_port}}   (nginx: both backends, release build)\n'
    printf '             http://127.0.0.1:{{web_port}}   (trunk serve: rebuilds on change, backend-1)\n'
    printf '  backend-1  http://127.0.0.1:{{backend_1_port}}  backend-2  http://127.0.0.1:{{backend_2_port}}\n'
    printf '  redis      %s   metrics: /metrics on each backend\n' "$REDIS_URL"
    printf '  publish key: %s\n\n' "$PUBLISH_KEY"
    wait -n

# `just dev` on a local Redis Cluster: 3 masters + 3 replicas (7001-7006), PUBLISH_REPLICAS=1.
dev-cluster: (dev "cluster")

# One backend without Redis (in-process bus, in-memory store) and trunk serve.
dev-single: setup
    #!/usr/bin/env bash
    set -euo pipefail
    source .ci/dev-supervise.sh
    dev_watch_just &
    cargo build -p backend
    prefix() { sed -u "s/^/$(printf '\033[%sm%-9s\033[0m ' "$1" "$2")/"; }
    PORT={{backend_1_port}} SERVER_ID=backend-1 PUBLISH_KEY=${PUBLISH_KEY:-dev-publish-key} \
        DEV_TOKENS=true PRESENCE_EVENTS='room:*' target/debug/backend 2>&1 | prefix 36 backend &
    trunk serve --port {{web_port}} --dist {{serve_dist}} 2>&1 | prefix 32 web &
    until curl -fs http://127.0.0.1:{{web_port}}/ >/dev/null; do sleep 0.5; done
    printf '\n  open  http://127.0.0.1:{{web_port}}   (single node, no Redis)\n\n'
    wait -n

# The standard load scenario: Redis and two release backends started here, 10,000 streams,
# 5 broadcasts/s for 30 s (50,000 deliveries/s), read by two client processes so the load
# generator uses both cores. Prints the table; JSON in target/bench/.
bench: (bench-scenario "throughput" "--streams 10000 --users 10000 --mode broadcast --rate 5 --duration 30 --streams-per-worker 5000")

# Any scenario against a fresh topology, e.g. just bench-scenario fanout "--streams 10000 --mode broadcast --rate 1 --duration 10" 1
# pin=yes runs the servers (backends, Redis) on core 0 and the load generator on core 1.
bench-scenario name args instances="2" redis="single" pin="no":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -p backend -p bench
    server=() client=()
    if [ "{{pin}}" = yes ]; then server=(taskset -c 0) client=(taskset -c 1); fi
    mkdir -p target/bench
    # One Redis on 6390, or (redis=cluster) three masters on 6391-6393.
    redis_pids=() redis_ports=()
    if [ "{{redis}}" = cluster ]; then redis_ports=(6391 6392 6393); else redis_ports=(6390); fi
    mkdir -p target/bench/cluster && rm -f target/bench/cluster/nodes-*.conf
    for port in "${redis_ports[@]}"; do
        cluster=()
        if [ "{{redis}}" = cluster ]; then
            cluster=(--cluster-enabled yes --cluster-config-file nodes-$port.conf --dir target/bench/cluster)
        fi
        "${server[@]}" redis-server --port $port --bind 127.0.0.1 --save "" --appendonly no "${cluster[@]}" >/dev/null &
        redis_pids+=($!)
    done
    # Backends first, then Redis, so they do not log its disappearance.
    trap 'trap - EXIT; kill ${pids_only[@]:-} 2>/dev/null; wait ${pids_only[@]:-}; kill ${redis_pids[@]}; wait' INT TERM EXIT
    pids_only=()
    for port in "${redis_ports[@]}"; do
        until redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.1; done
    done
    if [ "{{redis}}" = cluster ]; then
        redis-cli --cluster create $(printf '127.0.0.1:%s ' "${redis_ports[@]}") --cluster-yes >/dev/null
        for port in "${redis_ports[@]}"; do
            until redis-cli -p $port cluster info | grep -q cluster_state:ok; do sleep 0.2; done
        done
        redis_url="redis-cluster://127.0.0.1:6391?node=127.0.0.1:6392&node=127.0.0.1:6393"
    else
        redis_url=redis://127.0.0.1:6390
    fi
    export JWT_SECRET=bench-secret-bench-secret-bench-secret PUBLISH_KEY=bench-key RUST_LOG=warn
    urls=() pids=() ports=()
    for i in $(seq 1 {{instances}}); do
        port=$((3100 + 2 * i))
        REDIS_URL=$redis_url HOST=127.0.0.1 PORT=$port SERVER_ID=bench-$i \
            STREAM_QUEUE_SIZE=1024 MAX_STREAMS_PER_USER=100000 "${server[@]}" target/release/backend &
        pids+=(--pid $!) pids_only+=($!) urls+=(--url http://127.0.0.1:$port) ports+=($port)
        until curl -fs http://127.0.0.1:$port/readyz >/dev/null; do sleep 0.1; done
    done
    redis_cpu() {
        for port in "${redis_ports[@]}"; do redis-cli -p $port info cpu; done \
            | awk -F: '/^used_cpu_(sys|user):/ { total += $2 } END { printf "%.3f", total }'
    }
    cpu_before=$(redis_cpu)
    "${client[@]}" target/release/bench run --name {{name}} "${urls[@]}" "${pids[@]}" {{args}} \
        --json target/bench/{{name}}.json
    # What Redis and each instance did for it: Redis CPU, and the events each instance
    # received against those published (1.0 each when every instance gets every event).
    cpu_after=$(redis_cpu)
    metric() { curl -fs http://127.0.0.1:$1/metrics | awk -v m="$2" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'; }
    published=0
    for port in "${ports[@]}"; do published=$((published + $(metric $port events_published_total))); done
    {
        awk -v a=$cpu_after -v b=$cpu_before -v n=$published -v kind={{redis}} -v nodes=${#redis_ports[@]} \
            'BEGIN { printf "redis %s (%d node(s)): %.2f s CPU for %d events, %.1f us per event\n", kind, nodes, a - b, n, (a - b) * 1e6 / (n > 0 ? n : 1) }'
        for port in "${ports[@]}"; do
            received=$(metric $port 'relay_messages_received_total{kind="user"}')
            topics=$(metric $port 'relay_messages_received_total{kind="topic"}')
            awk -v p=$port -v r=$received -v t=$topics -v n=$published \
                -v c=$(metric $port 'redis_subscription_commands_total{command="ssubscribe"}') \
                -v b=$(metric $port redis_subscription_batches_total) \
                'BEGIN { printf "instance :%s received %d user and %d topic events: %.3f per published event; %d SSUBSCRIBEs in %d batches\n", p, r, t, (r + t) / (n > 0 ? n : 1), c, b }'
        done
    } | tee target/bench/{{name}}-redis.txt

# The same measurement against `bench floor`, a reference server that does nothing but
# write each broadcast to every socket: what this machine itself costs. E.g.
# just bench-floor floor-10000 "--streams 10000 --users 10000 --mode broadcast --rate 1 --duration 8"
bench-floor name args pin="no":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -p bench
    mkdir -p target/bench
    server=() client=()
    if [ "{{pin}}" = yes ]; then server=(taskset -c 0) client=(taskset -c 1); fi
    "${server[@]}" target/release/bench floor --port 3190 >/dev/null &
    floor=$!
    trap 'trap - EXIT; kill $floor 2>/dev/null; wait' INT TERM EXIT
    until curl -fs http://127.0.0.1:3190/readyz >/dev/null; do sleep 0.1; done
    JWT_SECRET=unused PUBLISH_KEY=unused "${client[@]}" target/release/bench run --name {{name}} \
        --url http://127.0.0.1:3190 --pid $floor {{args}} --json target/bench/{{name}}.json

# The same broadcast scenario against nchan (Debian's libnginx-mod-nchan: C inside nginx,
# two workers; apps/bench/nchan.conf), the strongest peer that runs here. Memory and CPU
# are its workers'. E.g.
# just bench-nchan nchan-10000 "--streams 10000 --users 10000 --mode broadcast --rate 1 --duration 8"
bench-nchan name args pin="no":
    #!/usr/bin/env bash
    set -euo pipefail
    test -f /usr/lib/nginx/modules/ngx_nchan_module.so || { echo "install libnginx-mod-nchan (apt-get install libnginx-mod-nchan)" >&2; exit 1; }
    cargo build --release -p bench
    prefix=$PWD/target/bench/nchan
    rm -rf $prefix && mkdir -p $prefix/tmp $prefix/logs
    server=() client=()
    if [ "{{pin}}" = yes ]; then server=(taskset -c 0) client=(taskset -c 1); fi
    "${server[@]}" nginx -p $prefix -c $PWD/apps/bench/nchan.conf -g 'daemon off;' &
    master=$!
    trap 'trap - EXIT; kill $master 2>/dev/null; wait' INT TERM EXIT
    until curl -fs http://127.0.0.1:3180/readyz >/dev/null; do sleep 0.1; done
    # The first frame of every stream (see nchan.conf).
    curl -fs -X POST --data '{"userId":"*","eventType":"stream.opened","data":{}}' \
        http://127.0.0.1:3180/api/publish >/dev/null
    pids=()
    for pid in $(pgrep -P $master); do pids+=(--pid $pid); done
    JWT_SECRET=unused PUBLISH_KEY=unused "${client[@]}" target/release/bench run --name {{name}} \
        --url http://127.0.0.1:3180 "${pids[@]}" --relayed-envelopes {{args}} \
        --json target/bench/{{name}}.json

# Backend, floor and nchan side by side: one event a second to each of STREAMS streams,
# RUNS times each, then the min/median/max table (python3 apps/bench/compare.py). The
# backend runs each of SCENARIOS: `broadcast` (to every stream), `user1` (every stream is
# one user's, and the event is that user's: one key's fan-out) and `topic1` (every stream,
# each of its own user, subscribes to one topic, and the event is the topic's). floor and
# nchan have one way only (a broadcast), the same work for them.
bench-compare streams="10000 19000" runs="3" pin="no" scenarios="broadcast user1 topic1":
    #!/usr/bin/env bash
    set -euo pipefail
    for n in {{streams}}; do
        common="--streams $n --rate 1 --duration 8 --streams-per-worker $(( (n + 1) / 2 ))"
        args="$common --users $n --mode broadcast"
        for run in $(seq 1 {{runs}}); do
            for scenario in {{scenarios}}; do
                case $scenario in
                    broadcast) name=backend scenario_args="$args" ;;
                    user1) name=backend_user1 scenario_args="$common --users 1 --mode user" ;;
                    topic1) name=backend_topic1 scenario_args="$common --users $n --mode topic --topics 1" ;;
                    *) echo "unknown scenario $scenario" >&2; exit 1 ;;
                esac
                just bench-scenario cmp-$name-$n-pin{{pin}}-$run "$scenario_args" 1 single {{pin}} >/dev/null
            done
            just bench-floor cmp-floor-$n-pin{{pin}}-$run "$args" {{pin}} >/dev/null
            just bench-nchan cmp-nchan-$n-pin{{pin}}-$run "$args" {{pin}} >/dev/null
        done
    done
    python3 apps/bench/compare.py target/bench/cmp-*-pin{{pin}}-*.json

# Presence at scale: 10,000 users each opening a stream of one topic as fast as they can
# connect, with presence kept (the default) and without (PRESENCE_TOPICS empty), RUNS
# times each, one instance and one Redis. While all are connected: Redis's memory, and
# (with presence) the answer for 10,000 present users: its time and the Redis calls it
# took. Lines in target/bench/presence.txt; the load generator's JSON beside them.
bench-presence runs="3":
    #!/usr/bin/env bash
    set -euo pipefail
    args="--streams 10000 --users 10000 --mode topic --topics 1 --rate 0 --duration 8 --streams-per-worker 5000"
    api=http://127.0.0.1:3102
    memory() { redis-cli -p 6390 info memory | awk -F: '/^used_memory:/ { print $2 + 0 }'; }
    scripts() { redis-cli -p 6390 info commandstats | awk -F'[=,]' '/^cmdstat_evalsha:/ { print $2 }'; }
    present() { curl -fs -H 'Authorization: Bearer bench-key' $api/api/topics/bench-t0/presence; }
    count() { present 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["count"])' 2>/dev/null || echo 0; }
    open() { curl -fs $api/metrics 2>/dev/null | awk '/^sse_streams_open / { print $2 }'; }
    mkdir -p target/bench && : > target/bench/presence.txt
    for run in $(seq 1 {{runs}}); do
        for presence in on off; do
            topics='*'; if [ $presence = off ]; then topics=''; fi
            PRESENCE_TOPICS="$topics" just bench-scenario presence-$presence-$run "$args" 1 \
                > target/bench/presence-$presence-$run.out 2>&1 &
            job=$!
            running() { kill -0 $job 2>/dev/null || { cat target/bench/presence-$presence-$run.out; exit 1; }; }
            until [ "$(open)" = 10000 ]; do running; sleep 0.2; done
            if [ $presence = on ]; then until [ "$(count)" = 10000 ]; do running; sleep 0.2; done; fi
            sleep 1
            line="presence $presence, run $run: Redis used_memory $(memory) bytes"
            if [ $presence = on ]; then
                calls=() times=()
                for i in 1 2 3 4 5; do
                    before=$(scripts)
                    times+=($(curl -fs -o /dev/null -w '%{time_total}' -H 'Authorization: Bearer bench-key' $api/api/topics/bench-t0/presence))
                    calls+=($(( $(scripts) - before )))
                done
                line="$line; presence answer ($(count) users): ${times[*]} s; Redis script calls per answer: ${calls[*]}"
            fi
            wait $job
            opened=$(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("streams connected per s: %.0f, backend KiB per stream: %.2f" % (r["connects_per_sec"], r["server"]["kib_per_stream"]))' target/bench/presence-$presence-$run.json)
            echo "$line; $opened" | tee -a target/bench/presence.txt
        done
    done
