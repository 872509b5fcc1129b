#!/bin/sh
# Renders the templates as the upstream nginx image does, then runs the command.
set -eu
out="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
filter="${NGINX_ENVSUBST_FILTER:-}"
names=$(env | cut -d= -f1 | grep -E "${filter:-.*}" | sed 's/^/$/' | tr '\n' ' ')
for template in /etc/nginx/templates/*.template; do
    [ -e "$template" ] || continue
    target="$out/$(basename "$template" .template)"
    envsubst "$names" < "$template" > "$target"
done
exec "$@"
