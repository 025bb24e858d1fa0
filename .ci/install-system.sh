#!/usr/bin/env bash
# System tools the deploy checks need: Prometheus (server + promtool) for rule tests and the
# live scrape test, and docker-compose (v1, Debian's) to parse docker-compose.yml without an
# engine. Idempotent: does nothing when both are already installed.
set -euo pipefail

packages=(prometheus docker-compose)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system: ${packages[*]} already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps the prometheus package from starting its own daemon (port 9090) where an
# init system is present; the tests start their own server on a free port.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-system: installed ${missing[*]}"
promtool --version 2>&1 | head -1
docker-compose version --short
