#!/usr/bin/env bash
# Builds the osgate .deb from release binaries already built (`cargo build --release --bins`):
# man pages from the binaries' own --help (help2man), then cargo-deb without rebuilding.
# Prints the .deb's path. Needs help2man and cargo-deb (.ci/run installs both).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin="$target/release"
man="$bin/man"
mkdir -p "$man"

# A subcommand's --help as roff: verbatim lines, with roff's escape and control characters
# made literal.
verbatim() {
  echo ".nf"
  sed -e 's/\\/\\e/g' -e "s/^[.']/\\\\\&&/"
  echo ".fi"
}

# One page: the top-level --help and --version (help2man), every subcommand's --help, and
# the files the package installs for it.
page() {
  local name=$1 summary=$2 files=$3 include="$man/$1.h2m"
  {
    echo "[COMMANDS]"
    for sub in $("$bin/$name" --help | awk '/^Commands:/ {on=1; next} /^$/ {on=0} on {print $1}'); do
      [ "$sub" = help ] && continue
      echo ".SS $sub"
      "$bin/$name" "$sub" --help | verbatim
    done
    echo "[FILES]"
    echo "$files"
    echo "[SEE ALSO]"
    echo "osgate(1), osgate-controlplane(1), osgatectl(1), /usr/share/doc/osgate/README.systemd"
  } >"$include"
  help2man --no-info --section=1 --name="$summary" --include="$include" \
    --output="$man/$name.1" "$bin/$name"
  gzip -9nf "$man/$name.1"
}

page osgate "opportunistic-security TCP gateway node" \
  "/etc/osgate/node.toml, /etc/osgate/keys/node.key, /var/lib/osgate, osgate.service"
page osgate-controlplane "control plane for osgate nodes" \
  "/etc/osgate/controlplane.toml, /etc/osgate/keys/controlplane.key, /var/lib/osgate-controlplane, osgate-controlplane.service"
page osgatectl "administer an osgate control plane" \
  "/etc/osgate/keys/controlplane.crt (the control plane's key, for --server-cert)"

cd "$root"
# --strip: the release profile keeps line tables for backtraces; a package ships stripped
# binaries (Debian Policy 10.1). --fast: xz at a low level, to keep the build short.
cargo deb -p osgate-node --no-build --strip --fast --quiet --output "$target/debian"
