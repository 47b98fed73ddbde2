#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tests/demo.sh — the demo command: installs what is missing (Debian 12), builds
# the host-release preset, then runs scrm-demo: TLS mosquitto on loopback, the
# reference central, scrm-agent, and a real store day replayed through libscrm
# with the network down for part of the day.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
cross/setup-host.sh
echo "building (host-release)..."
mkdir -p build
cmake --preset host-release >build/demo-configure.log 2>&1 || { cat build/demo-configure.log; exit 1; }
cmake --build --preset host-release >/dev/null
B=build/host-release
export SCRM_AGENT_BIN=$B/agent/daemon/scrm-agent SCRM_CENTRAL_BIN=$B/tests/central/scrm-central SCRM_POSSIM_BIN=$B/tests/tools/scrm-pos-sim SCRM_CACHEGEN_BIN=$B/tests/tools/scrm-cachegen SCRM_CTL_BIN=$B/agent/tools/scrmctl/scrmctl
exec "$B/tests/demo/scrm-demo" "$REPO/tests/data"
