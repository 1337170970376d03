#!/usr/bin/env bash
# Install what interop/run.sh needs on Debian 12.  Idempotent: does nothing
# when the packages are already installed, and only runs `apt-get update`
# when apt does not know the packages yet (fresh image with empty lists) or
# an install from stale lists fails.
set -euo pipefail

PKGS=(golang-go golang-github-rabbitmq-amqp091-go-dev python3-pika openssl)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

missing=()
for pkg in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install.sh: ${PKGS[*]} already installed"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
updated=0
# apt-cache policy prints "Candidate: (none)" for packages it has no lists for.
if apt-cache policy "${missing[@]}" 2>/dev/null | grep -q 'Candidate: (none)' ||
    [[ $(apt-cache policy "${missing[@]}" 2>/dev/null | grep -c 'Candidate:') -lt ${#missing[@]} ]]; then
    "${SUDO[@]}" apt-get update
    updated=1
fi
if ! "${SUDO[@]}" apt-get install -y "${missing[@]}"; then
    # Lists older than the mirror give 404s; refresh once and retry.
    if ((updated)); then
        exit 1
    fi
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" apt-get install -y "${missing[@]}"
fi
