#!/usr/bin/env bash
# Build the local base image when no registry can supply one: a minimal Debian bookworm made by
# mmdebstrap from Debian's package mirror and imported into the engine. Prints the image's tag.
# Idempotent: an image already built from the same package list is reused.
#
# Its python3 is 3.11, the machine's minor version, so wheels built here install in it. The
# Dockerfile takes it as BASE_IMAGE (its default, python:3.11-slim-bookworm, needs a registry).
#
# P2PCHAT_BASE_IMAGE names an existing image to use instead (nothing is built; it must exist).
# Shared machines: the tag names the package list, so every user's build of it is the same
# image and all of them share it; it is never deleted, and never re-tagged: the build runs under
# a machine-wide lock and only when the tag is missing.
set -euo pipefail

if [[ -n "${P2PCHAT_BASE_IMAGE:-}" ]]; then
    docker image inspect "$P2PCHAT_BASE_IMAGE" >/dev/null 2>&1 || {
        echo "base-image: P2PCHAT_BASE_IMAGE=$P2PCHAT_BASE_IMAGE: no such image" >&2
        exit 1
    }
    echo "$P2PCHAT_BASE_IMAGE"
    exit 0
fi

PACKAGES="python3,python3-venv,python3-pip,iproute2,iptables,ca-certificates,tini"
# The tag names the package list, so changing the list builds a new image.
TAG="p2pchat-base:bookworm-$(printf '%s' "$PACKAGES" | sha256sum | cut -c1-12)"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG"
    exit 0
fi
# One build at a time on this machine (two would both import, the second re-tagging the
# first's image); the lock file is shared by every user, opened read-only when it is another's.
lock="${TMPDIR:-/tmp}/p2pchat-base-image.lock"
{ exec 8>>"$lock"; } 2>/dev/null || exec 8<"$lock"
flock 8
if docker image inspect "$TAG" >/dev/null 2>&1; then  # built meanwhile, by whoever held the lock
    echo "$TAG"
    exit 0
fi
command -v mmdebstrap >/dev/null 2>&1 || { echo "base-image: no mmdebstrap (run ops/containers/engine.sh)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "base-image: mmdebstrap bookworm ($PACKAGES)" >&2
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" bookworm "$work/base.tar" >&2
docker import --change 'CMD ["/bin/bash"]' --change "LABEL org.p2pchat.base-packages=$PACKAGES" \
    "$work/base.tar" "$TAG" >/dev/null
echo "$TAG"
