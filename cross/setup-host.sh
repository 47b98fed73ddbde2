#!/usr/bin/env bash
# cross/setup-host.sh — installs the NATIVE build and test dependencies of this project on a
# Debian 12 host: libraries (-dev), the broker and tools the tests use, and clang with its
# libFuzzer/sanitizer runtime. Idempotent: when everything is already installed (checked
# with dpkg-query) it does not call apt at all and returns at once. It installs only the
# packages listed below (with --no-install-recommends) and their dependencies; it never
# removes or upgrades anything on purpose. Cross builds: see cross/setup-sysroot.sh.
#
# Usage: cross/setup-host.sh        (as root; prints what it installs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cross/lib-host-apt.sh
. "$HERE/lib-host-apt.sh"

HOST_PACKAGES=(
  # build
  build-essential cmake pkg-config
  # libraries the agent links (Debian 12 versions: see shared/notes/TOOLCHAIN.md)
  libpaho-mqtt-dev libsqlite3-dev libmbedtls-dev libcjson-dev libssl-dev
  # tests: unit tests, broker, certificates, database inspection
  libcmocka-dev mosquitto mosquitto-clients openssl sqlite3
  # libFuzzer / sanitizer build (SCRM_FUZZ=ON)
  clang libclang-rt-14-dev
)

if [ "$#" -gt 0 ]; then
  case "$1" in
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "error: unexpected argument: $1 (this script takes none)" >&2; exit 2 ;;
  esac
fi

mapfile -t missing < <(scrm_missing_host_pkgs "${HOST_PACKAGES[@]}")
if [ "${#missing[@]}" -eq 0 ]; then
  echo "host dependencies: all ${#HOST_PACKAGES[@]} packages already installed"
  exit 0
fi

echo "host dependencies missing: ${missing[*]}"
scrm_host_apt_install "${missing[@]}"

mapfile -t still < <(scrm_missing_host_pkgs "${HOST_PACKAGES[@]}")
if [ "${#still[@]}" -ne 0 ]; then
  echo "error: still not installed after apt-get: ${still[*]}" >&2
  exit 1
fi
echo "host dependencies: installed ${missing[*]}"
