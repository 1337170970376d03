#!/usr/bin/env bash
# Install what interop/run.sh and interop/client-suites.sh need on Debian 12.  Idempotent: does nothing
# when the packages are already installed, and only runs `apt-get update`
# when apt does not know the packages yet (fresh image with empty lists) or
# an install from stale lists fails.
set -euo pipefail

# golang-github-rabbitmq-amqp091-go-dev also ships the client's integration tests, and
# pulls in golang-uber-goleak-dev for them. socat bridges the client suites' fixed port to
# the broker; python3-venv holds the PyPI suites. Node comes from Debian only when the
# image has none (this one has a newer Node from elsewhere, which the tests prefer).
PKGS=(golang-go golang-github-rabbitmq-amqp091-go-dev python3-pika openssl socat python3-venv)
if ! command -v npm >/dev/null; then
    PKGS+=(nodejs npm)
fi

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
