#!/usr/bin/env bash
# Build the p2pchat image (`make image`) on a machine with no image registry: the engine
# (engine.sh), the local base image (base-image.sh), a wheelhouse of p2pchat's runtime
# dependencies built here (TLS from containers to the package index does not verify on these
# machines), then `docker build` with both. Tags $IMAGE (default p2pchat:local) and prints it.
# Re-running is cheap: the base image is reused, pip's cache makes the wheelhouse quick, and
# the Dockerfile's layers stay cached until pyproject.toml or the source change.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE="${IMAGE:-p2pchat:local}"
VENV_BIN="${VENV_BIN:-$PWD/.venv/bin}"
WHEELHOUSE=build/wheelhouse   # inside the build context; .dockerignore lets exactly it through

say() { printf 'image: %s\n' "$*" >&2; }

# One build at a time per checkout (make image and a test session may overlap): they share
# the wheelhouse directory.
mkdir -p build
exec 9>build/.image.lock
flock 9

ops/containers/engine.sh 9>&-   # a dockerd it starts must not inherit the lock
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

say "docker build $IMAGE (base $base)"
previous="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
docker build --force-rm \
    --build-arg BASE_IMAGE="$base" \
    --build-arg WHEELHOUSE="$WHEELHOUSE" \
    --tag "$IMAGE" . >&2
# The image the tag used to name, if nothing else uses it (its build cache stays).
if [[ -n "$previous" && "$previous" != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi
echo "$IMAGE"
