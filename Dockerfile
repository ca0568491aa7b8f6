# p2pchat node image: one image for every role.
#
#   docker build -t p2pchat:local .                       # a machine with internet
#   make image                                            # this project's machines (no registry):
#                                                         # local base image + local wheelhouse
#
#   docker run --rm -it p2pchat:local                     # a chat peer (console on the TTY)
#   docker run -d -v boot:/data -p 4001:4001 p2pchat:local --role bootstrap
#   docker run --rm -v boot:/data p2pchat:local id        # the PeerId kept in that volume
#
# The entrypoint is `tini -- p2pchat`: arguments are p2pchat's (`--role relay`, `id`, ...); run
# something else with `--entrypoint` (e.g. `--entrypoint sh`). It runs as the unprivileged user
# p2pchat (uid 10001). Identity and store live in /data (a volume). /run/p2pchat, writable by
# that user and empty, is where a node may publish public facts for its neighbours (compose.yml
# shares its PeerIds there through a volume). The operator endpoint (/metrics, /healthz,
# /readyz) listens on 0.0.0.0:9464 in every role (one node per container; the role presets'
# 9465/9466 and the peer's random loopback port are overridden), which the HEALTHCHECK queries;
# a different P2PCHAT_METRICS__LISTEN is followed by the HEALTHCHECK, a --metrics flag is not.
#
# BASE_IMAGE must be a Debian bookworm with python3.11 (+ venv and pip); tini is installed from
# Debian when the base lacks it. WHEELHOUSE, when given, is a directory inside the build context
# (ops/containers/image.sh passes build/wheelhouse) holding wheels for every dependency and for
# the build backend: the build then never contacts a package index.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# Without a wheelhouse, py-libp2p's fastecdsa is compiled here: it needs gcc, GMP's headers and
# Python's (python:*-slim has the latter; Debian's own python3 needs python3-dev).
RUN if [ -z "$WHEELHOUSE" ]; then \
        set -- gcc libc6-dev libgmp-dev && \
        if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))'; then \
            set -- "$@" python3-dev; \
        fi && \
        apt-get update && \
        apt-get install -y --no-install-recommends "$@" && \
        rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/p2pchat
# The dependencies get their own layer, keyed on pyproject.toml and the wheelhouse only, so a
# source change does not reinstall them. Without a wheelhouse, pyproject.toml is copied in its
# place (a harmless stand-in: COPY needs a source).
COPY pyproject.toml /src/
COPY ${WHEELHOUSE:-pyproject.toml} /wheelhouse/
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /src/requirements.txt && \
    if [ -n "$WHEELHOUSE" ]; then set -- --no-index --find-links /wheelhouse; fi && \
    /opt/p2pchat/bin/pip install "$@" -r /src/requirements.txt
COPY README.md LICENSE /src/
COPY share /src/share
COPY config /src/config
COPY node /src/node
COPY roles /src/roles
RUN if [ -n "$WHEELHOUSE" ]; then set -- --no-index --find-links /wheelhouse; fi && \
    /opt/p2pchat/bin/pip install "$@" --no-deps /src && \
    /opt/p2pchat/bin/p2pchat --version

FROM ${BASE_IMAGE}
# tini reaps zombies and forwards signals: p2pchat exits 0 on SIGTERM well within docker's 10 s.
# libgmp10 (fastecdsa's runtime library) is part of every Debian base (coreutils needs it).
RUN if ! command -v tini >/dev/null; then \
        apt-get update && \
        apt-get install -y --no-install-recommends tini && \
        rm -rf /var/lib/apt/lists/*; \
    fi
RUN groupadd --gid 10001 p2pchat && \
    useradd --no-log-init --uid 10001 --gid p2pchat --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin p2pchat && \
    mkdir -p /data /run/p2pchat && \
    chown p2pchat:p2pchat /data /run/p2pchat && chmod 0700 /data
COPY --from=build /opt/p2pchat /opt/p2pchat
# PROMPT_TOOLKIT_NO_CPR: a peer's console in a container usually has a TTY nobody is attached
# to, which never answers prompt_toolkit's cursor-position request; it then wrote a warning
# into the console. Without CPR only the completion menu's reserved space is guessed.
ENV PATH=/opt/p2pchat/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PROMPT_TOOLKIT_NO_CPR=1 \
    P2PCHAT_NODE__DATA_DIR=/data \
    P2PCHAT_METRICS__LISTEN=0.0.0.0:9464
USER p2pchat
WORKDIR /data
VOLUME ["/data"]
# Role presets: bootstrap 4001, relay 4011, archiver 4021 (TCP and WebSocket share each port);
# a peer listens on random ports unless told otherwise. 9464: the operator endpoint.
EXPOSE 4001 4011 4021 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; host, _, port = os.environ.get('P2PCHAT_METRICS__LISTEN', '0.0.0.0:9464').rpartition(':'); host = '127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host.strip('[]'); urllib.request.urlopen(f'http://{host}:{port}/healthz', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "p2pchat"]
