#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine: CNCF Distribution
# (docker-registry), a Docker engine (docker.io) for the docker-mode GC tests, htpasswd
# (apache2-utils) for basic-auth tests, docker-compose and systemd-analyze (systemd) to check
# the files in deploy/, wrk for the benchmark's limit, and this project with its test extras.
# The tests start every service themselves; nothing here is left running.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v wrk >/dev/null || missing+=(wrk)  # benchmarks/limit.py: the registry's own limit
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"
