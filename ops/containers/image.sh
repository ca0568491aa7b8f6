#!/usr/bin/env bash
# Build the p2pchat image (`make image`) on a machine with no image registry: the engine
# (engine.sh), the local base image (base-image.sh), a wheelhouse of p2pchat's runtime
# dependencies built here (TLS from containers to the package index does not verify on these
# machines), then `docker build` with both. Tags $P2PCHAT_IMAGE (default p2pchat:local) and
# prints it.
# Re-running is cheap: the base image is reused, pip's cache makes the wheelhouse quick, and
# the Dockerfile's layers stay cached until pyproject.toml or the source change.
#
# Shared machines: the image is labelled org.p2pchat.owner=$P2PCHAT_OWNER (default
# <user>@<host>:<this checkout>). An existing tag whose image has another owner (another user's,
# another checkout's, or an image not built by this script) is never replaced: the script stops
# with one line, unless P2PCHAT_REPLACE=1. The image a rebuild replaces is removed only when it
# is this owner's and nothing else uses it.
set -euo pipefail
cd "$(dirname "$0")/../.."

# IMAGE is the older name of P2PCHAT_IMAGE (still honoured).
IMAGE="${P2PCHAT_IMAGE:-${IMAGE:-p2pchat:local}}"
OWNER="${P2PCHAT_OWNER:-$(id -un)@$(hostname):$PWD}"
OWNER_LABEL=org.p2pchat.owner
VENV_BIN="${VENV_BIN:-$PWD/.venv/bin}"
WHEELHOUSE=build/wheelhouse   # inside the build context; .dockerignore lets exactly it through

say() { printf 'image: %s\n' "$*" >&2; }

# One build at a time per checkout (make image and a test session may overlap): they share
# the wheelhouse directory.
mkdir -p build
exec 9>build/.image.lock
flock 9

ops/containers/engine.sh 9>&-   # a dockerd it starts must not inherit the lock

# The owner of the image a tag names ("" when none, or when the image has no such label).
owner_of() {
    local owner
    owner="$(docker image inspect --format "{{ index .Config.Labels \"$OWNER_LABEL\" }}" "$1" \
        2>/dev/null)" || return 1
    [[ "$owner" == "<no value>" ]] && owner=""
    printf '%s' "$owner"
}

# Refuse early (before any work) to move a tag that is not ours.
if existing="$(owner_of "$IMAGE")" && [[ "$existing" != "$OWNER" ]]; then
    if [[ "${P2PCHAT_REPLACE:-}" != 1 ]]; then
        say "refusing to replace $IMAGE: it exists and was not built by make image from here" \
            "(owner: ${existing:-none}); pick another tag with P2PCHAT_IMAGE=..., or replace" \
            "it with P2PCHAT_REPLACE=1"
        exit 3
    fi
    say "replacing $IMAGE (owner: ${existing:-none}), as P2PCHAT_REPLACE=1 asks; its image stays"
fi
base="$(ops/containers/base-image.sh)"

# Runtime dependencies only (not the dev extra), plus the build backend: the image builds
# p2pchat itself from the source with --no-index (.dockerignore leaves p2pchat's own wheel out,
# so the dependency layer stays cached across source changes).
# The dependencies are pyproject.toml's, so the wheelhouse is rebuilt only when it changes.
stamp="$WHEELHOUSE/.pyproject.sha256"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    say "wheelhouse $WHEELHOUSE is current"
else
    say "wheelhouse $WHEELHOUSE"
    rm -rf "$WHEELHOUSE"
    mkdir -p "$WHEELHOUSE"
    "$VENV_BIN/pip" wheel --quiet --disable-pip-version-check . -w "$WHEELHOUSE"
    "$VENV_BIN/pip" wheel --quiet --disable-pip-version-check "setuptools>=69" wheel \
        -w "$WHEELHOUSE"
    echo "$wanted" >"$stamp"
fi

say "docker build $IMAGE (base $base, owner $OWNER)"
previous="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
previous_owner="$(owner_of "$IMAGE" || true)"
docker build --force-rm \
    --build-arg BASE_IMAGE="$base" \
    --build-arg WHEELHOUSE="$WHEELHOUSE" \
    --label "$OWNER_LABEL=$OWNER" \
    --tag "$IMAGE" . >&2
# The image the tag used to name, if it was ours and nothing else uses it (`docker image rm`
# without --force refuses an image that has other tags or containers; its build cache stays).
if [[ -n "$previous" && "$previous_owner" == "$OWNER" \
      && "$previous" != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi
echo "$IMAGE"
