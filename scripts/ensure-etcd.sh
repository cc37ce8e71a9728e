#!/usr/bin/env bash
# Makes sure an etcd binary (and openssl, for the TLS tests) is available for
# the demo, the tests and the benchmarks. Nothing to do when ETCD_ENDPOINTS
# points at a running cluster (demo only) or when ETCD_BIN / PATH has etcd.
# Otherwise, as root on Debian/Ubuntu, installs Debian's etcd-server package;
# else says exactly what to install.
set -euo pipefail

# the demo needs no local etcd when it is pointed at a cluster
if [[ "${1:-}" == "--demo" && -n "${ETCD_ENDPOINTS:-}" ]]; then
  exit 0
fi

if [[ -n "${ETCD_BIN:-}" && ! -x "${ETCD_BIN}" ]]; then
  echo "ETCD_BIN=${ETCD_BIN} is not an executable file: point it at an etcd 3.4+ binary, or unset it" >&2
  exit 1
fi

missing=()
if [[ -z "${ETCD_BIN:-}" ]] && ! command -v etcd >/dev/null 2>&1; then
  missing+=(etcd-server)
fi
if ! command -v openssl >/dev/null 2>&1; then
  missing+=(openssl)
fi
((${#missing[@]} == 0)) && exit 0

if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${missing[*]}." >&2
  echo "Install them (Debian/Ubuntu: sudo apt-get install -y ${missing[*]}), or set ETCD_BIN to an etcd 3.4+ binary." >&2
  exit 1
fi

echo "installing ${missing[*]} with apt-get ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
