#!/usr/bin/env bash
# Runs a local osgate gateway pair (pair.toml) with a demo backend, in the foreground.
#   curl http://127.0.0.1:7001/      -> through outbound, TLS, inbound, to the backend
#   curl http://127.0.0.1:9464/metrics
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cargo build --release -p osgate-node --manifest-path "$root/Cargo.toml"
osgate="$root/target/release/osgate"
mkdir -p "$here/keys"
if [ ! -f "$here/keys/node.key" ]; then
  "$osgate" keygen --cert "$here/keys/node.crt" --key "$here/keys/node.key" --name localhost --name 127.0.0.1
fi
mkdir -p "$here/keys/www" && echo "hello through osgate" > "$here/keys/www/index.html"
python3 -m http.server 8080 --bind 127.0.0.1 --directory "$here/keys/www" >/dev/null 2>&1 &
backend=$!
trap 'kill $backend 2>/dev/null' EXIT
"$osgate" check-config "$here/pair.toml"
exec_status=0
"$osgate" run -c "$here/pair.toml" || exec_status=$?
exit $exec_status
