#!/usr/bin/env bash
# Makes sure the images the compose stack builds on exist in Podman's store: the real
# upstream ones when a registry answers, else local stand-ins built from a Debian
# bootstrap (debootstrap from the Debian mirror apt uses). Each is made once per machine
# and reused after that.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '\033[1m[images]\033[0m %s\n' "$*"; }

BASE=localhost/local/debian:bookworm
MIRROR=http://deb.debian.org/debian

have() { podman image exists "$1"; }
pulled() { timeout 120 podman pull -q "$1" >/dev/null 2>&1; }

ensure_base() {
  have "$BASE" && return
  say "bootstrapping a Debian bookworm base image (about a minute)"
  local root
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/dev/null
  tar -C "$root" -c . | podman import -q - "$BASE" >/dev/null
  rm -rf "$root"
}

# stand_in IMAGE CONTAINERFILE [FILE...]: IMAGE as it is, pulled, or built locally from
# CONTAINERFILE with FILEs beside it.
stand_in() {
  local image=$1 file=$2
  shift 2
  if have "$image"; then
    return
  fi
  if pulled "$image"; then
    say "pulled $image"
    return
  fi
  ensure_base
  say "no registry: building a stand-in for $image"
  local context
  context=$(mktemp -d)
  cp "$file" "$@" "$context/"
  podman build -q -t "$image" -f "$context/$(basename "$file")" "$context" >/dev/null
  rm -rf "$context"
}

stand_in docker.io/library/redis:7-alpine redis.Containerfile
stand_in docker.io/library/nginx:1.27-alpine nginx.Containerfile nginx-entrypoint.sh
stand_in docker.io/library/rust:1-bookworm rust.Containerfile /etc/ssl/certs/ca-certificates.crt
if ! have docker.io/library/debian:bookworm-slim && ! pulled docker.io/library/debian:bookworm-slim; then
  ensure_base
  podman tag "$BASE" docker.io/library/debian:bookworm-slim
  say "no registry: debian:bookworm-slim is the local Debian base"
fi
say "ready: redis, nginx, rust and debian base images"
