#!/usr/bin/env bash
# Install every Debian package that edgecollab's agent, demo and tests execute (only
# those missing), then prove that podman can play a pod on this machine.
#
#   scripts/install-deps.sh
#
# Packages are named one by one, Recommends included: apt here runs with
# --no-install-recommends, and podman 4.3 cannot create a pod without catatonit,
# which is only one of its Recommends.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    mosquitto                   # the MQTT broker of the demo and the tests
    podman                      # the agent's edge runtime
    conmon                      # podman's per-container monitor
    runc                        # the OCI runtime podman starts containers with
    catatonit                   # podman builds its pause (infra) image from it
    containernetworking-plugins # podman 4.3's pod networks, the default bridge included
    iptables                    # the bridge network's port mappings and NAT
    busybox-static              # the demo image is built from its static busybox
    chromium                    # the dashboard test's browser (headless; tests/e2e/test_web_dashboard.py)
    chromium-driver             # chromedriver, through which Selenium drives that browser (nothing downloaded)
    postgresql                  # the hub store's PostgreSQL tests start its server binaries (initdb, pg_ctl)
    faketime                    # the calendar tests move broker, hub and agents months ahead (libfaketime)
)
# The pyenv or system python3 running the venv must have venv and ensurepip.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)

installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

missing=()
for package in "${packages[@]}"; do
    installed "$package" || missing+=("$package")
done

if [[ ${#missing[@]} -gt 0 ]]; then
    echo "Installing missing packages: ${missing[*]}"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { echo "error: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# A dynamically linked busybox (package busybox) would need the host's libc in the image.
if ldd /usr/bin/busybox >/dev/null 2>&1; then
    echo "error: /usr/bin/busybox is dynamically linked; replace package busybox with busybox-static" >&2
    exit 1
fi

bash scripts/prove-runtime.sh .build
