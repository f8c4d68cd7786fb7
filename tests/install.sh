#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine: CNCF Distribution
# (docker-registry), a Docker engine (docker.io) for the docker-mode GC tests, htpasswd
# (apache2-utils) for basic-auth tests, docker-compose and systemd-analyze (systemd) to check
# the files in deploy/, promtool (prometheus) to lint the /metrics output, wrk for the
# benchmark's limit, python3-venv, and this project with its test extras in ./.venv.
#
# Debian's python3 is "externally managed" (PEP 668): pip refuses to install into it, and a
# fresh Debian has no pip at all. So the project goes into a virtual environment made from
# Debian's own python3 (/usr/bin/python3 where it exists; PYTHON=... to choose another),
# and the tests run from it: `.venv/bin/python -m pytest`.
# The tests start every service themselves; nothing here is left running.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
fi

missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v promtool >/dev/null || missing+=(prometheus)
command -v "$python" >/dev/null || missing+=(python3)
# Debian splits venv's pip bootstrap (ensurepip) into python3-venv.
"$python" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v wrk >/dev/null || missing+=(wrk)  # benchmarks/limit.py: the registry's own limit
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
