#!/bin/sh
# The image's HEALTHCHECK: healthy while batchd answers GET /health with 2xx.
# The address is BATCHD_LISTEN's (the entrypoint configures batchd with it;
# with your own BATCHD_CONFIG, set BATCHD_LISTEN to its server.listen too).
# A wildcard address is reached through loopback.
set -eu

listen="${BATCHD_LISTEN:-0.0.0.0:8080}"
host="${listen%:*}"
port="${listen##*:}"
case "$host" in
  0.0.0.0) host=127.0.0.1 ;;
  "[::]") host="[::1]" ;;
esac
# --noproxy: an HTTP(S)_PROXY set for the model backends must not route the
# container's own loopback check.
exec curl --fail --silent --show-error --noproxy '*' --max-time 4 \
  --output /dev/null "http://$host:$port/health"
