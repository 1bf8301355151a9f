#!/usr/bin/env bash
# Runs a demo fleet in the foreground: a control plane on embedded SQLite, and a local
# gateway pair (pair.toml) registered with it, with a demo backend.
#   curl http://127.0.0.1:7001/        -> through outbound, TLS, inbound, to the backend
#   curl http://127.0.0.1:9464/metrics  (node)   curl http://127.0.0.1:9465/metrics (control plane)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cargo build --release -p osgate-node -p osgate-controlplane --bins --manifest-path "$root/Cargo.toml"
bin="$root/target/release"
mkdir -p "$here/keys" "$here/state"
for key in node controlplane admin; do
  if [ ! -f "$here/keys/$key.key" ]; then
    "$bin/osgate" keygen --cert "$here/keys/$key.crt" --key "$here/keys/$key.key" \
      --name localhost --name 127.0.0.1 >/dev/null
  fi
done
mkdir -p "$here/keys/www" && echo "hello through osgate" > "$here/keys/www/index.html"
python3 -m http.server 8080 --bind 127.0.0.1 --directory "$here/keys/www" >/dev/null 2>&1 &
backend=$!
"$bin/osgate-controlplane" run -c "$here/controlplane/controlplane.toml" 2>"$here/state/controlplane.log" &
controlplane=$!
trap 'kill $backend $controlplane 2>/dev/null' EXIT

export OSGATE_SERVER=127.0.0.1:7400 OSGATE_SERVER_CERT="$here/keys/controlplane.crt" \
  OSGATE_CERT="$here/keys/admin.crt" OSGATE_KEY="$here/keys/admin.key"
ctl="$bin/osgatectl"
for _ in $(seq 50); do "$ctl" get nodes >/dev/null 2>&1 && break; sleep 0.2; done
"$ctl" nodes register pair --node-cert "$here/keys/node.crt" --address 127.0.0.1:7443
"$ctl" apply -f "$here/controlplane/fleet-policy.toml"
cat <<HINT

control plane on 127.0.0.1:7400 (log: $here/state/controlplane.log); administer it with:
  export OSGATE_SERVER=$OSGATE_SERVER OSGATE_SERVER_CERT=$OSGATE_SERVER_CERT OSGATE_CERT=$OSGATE_CERT OSGATE_KEY=$OSGATE_KEY
  $ctl get nodes

HINT
"$bin/osgate" check-config "$here/pair.toml"
exec_status=0
"$bin/osgate" run -c "$here/pair.toml" || exec_status=$?
exit $exec_status
