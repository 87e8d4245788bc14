#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need, when they are missing.
# Runs apt only as root; otherwise says exactly what to install and fails.
set -euo pipefail

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v dpkg-scanpackages >/dev/null || need+=(dpkg-dev)
command -v restic >/dev/null || need+=(restic)
command -v borg >/dev/null || need+=(borgbackup)
[[ -x /usr/bin/time ]] || need+=(time)
command -v systemd-analyze >/dev/null || need+=(systemd)  # verifies the shipped unit

if ((${#need[@]} == 0)); then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [[ $(id -u) -ne 0 ]]; then
  echo "missing Debian packages: ${need[*]}; run: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
