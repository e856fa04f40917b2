#!/usr/bin/env bash
# `make image-check`: build the onebyte image with podman and run the compose swarm from it.
#
#  1. podman (and debootstrap, prometheus) from Debian's packages when missing and root can apt-get;
#  2. the base image: python:3.11-slim-bookworm when it can be pulled (30 s), else a local one built
#     from Debian's packages with debootstrap (python3 + a virtual environment on PATH), kept as
#     onebyte-base:bookworm and reused by later runs;
#  3. torch's CPU wheel into deploy/wheels/ (pip download from the PyTorch CPU index or the host's
#     configured index, else /opt/wheels), which deploy/Dockerfile installs instead of reaching its
#     TORCH_INDEX_URL;
#  4. podman build -f deploy/Dockerfile;
#  5. bootstrap, peer1 and peer2 from the image with the commands, environment and mounts of
#     deploy/docker-compose.yml (read from it), on one podman network and shared volumes, and
#     Debian's Prometheus on the host scraping them with deploy/prometheus.yml (targets rewritten to
#     the containers' addresses);
#  6. checks: both peers apply >= MIN_ROUNDS rounds, with both peers' contributions, and agree on the
#     weights' hash at every round both applied; Prometheus has up == 1 for all three targets.
# Containers, network, volumes and Prometheus are removed on exit; the images are kept (cache).
# Traffic: the podman network and loopback, plus the build's downloads (Debian, PyPI).
#
# Environment: IMAGE (onebyte:check), BASE_IMAGE (skip the pull/debootstrap choice), MIN_ROUNDS (3),
# PY (a python with PyYAML and pip: .venv/bin/python when present), KEEP=1 (leave the swarm running).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS
IMAGE=${IMAGE:-onebyte:check}
LOCAL_BASE=onebyte-base:bookworm
OFFICIAL_BASE=docker.io/library/python:3.11-slim-bookworm
MIN_ROUNDS=${MIN_ROUNDS:-3}
TORCH_SPEC=$(grep -o 'torch==[0-9.]*' deploy/Dockerfile | head -n 1)
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
NAME=onebyte-check-$$
WORK=$(mktemp -d /tmp/onebyte-image-check.XXXXXX)
PROM_PID=

say() { echo "image-check: $*"; }
elapsed() { echo "$((SECONDS - START)) s"; }
fail() {
    for c in bootstrap peer1 peer2; do
        if podman container exists "$NAME-$c" 2>/dev/null; then
            echo "---- podman logs $NAME-$c (last 15 lines)" >&2
            podman logs --tail 15 "$NAME-$c" >&2 2>&1 || true
        fi
    done
    echo "image-check: FAILED after $(elapsed): $*" >&2
    exit 1
}
# this machine cannot run containers at all (a sandbox without the kernel features): not the image's fault;
# exit 77 so that CI says it skipped, and why
unable() {
    echo "image-check: SKIPPED after $(elapsed): this machine cannot run containers: $*" >&2
    exit 77
}
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        say "KEEP=1: left running: containers $NAME-*, network $NAME, Prometheus pid ${PROM_PID:-none}, $WORK"
        return
    fi
    [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
    for c in peer1 peer2 bootstrap; do podman rm -f -t 5 "$NAME-$c" >/dev/null 2>&1 || true; done
    for v in shared bootstrap-data peer1-data peer2-data; do podman volume rm -f "$NAME-$v" >/dev/null 2>&1 || true; done
    podman network rm -f "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

# -- 1. tools --------------------------------------------------------------------------------------
need=()
command -v podman >/dev/null || need+=(podman)
command -v prometheus >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing ${need[*]} with apt-get"
        apt-get update -qq >/dev/null || fail "apt-get update failed"
        export DEBIAN_FRONTEND=noninteractive
        if [[ " ${need[*]} " == *" podman "* ]]; then
            apt-get install -y -qq podman >/dev/null || fail "apt-get install podman failed"
        fi
        if [[ " ${need[*]} " == *" prometheus "* ]]; then # no recommends: node-exporter is not needed here
            apt-get install -y -qq --no-install-recommends prometheus >/dev/null || fail "apt-get install prometheus failed"
        fi
    else
        fail "${need[*]} missing, and not root with apt-get to install them"
    fi
fi
"$PY" -c 'import yaml' 2>/dev/null || fail "$PY has no PyYAML (run make setup, or set PY)"

# -- 2. base image ---------------------------------------------------------------------------------
build_local_base() {
    if ! command -v debootstrap >/dev/null; then
        { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; } || fail "debootstrap missing and cannot be installed"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >/dev/null ||
            fail "apt-get install debootstrap failed"
    fi
    local rootfs=$WORK/rootfs
    say "building $LOCAL_BASE with debootstrap (Debian bookworm, python3, a venv on PATH)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
        http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 ||
        { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed (log above)"; }
    # Debian's python refuses `pip install` outside a virtual environment (PEP 668): the image's pip is a venv's
    chroot "$rootfs" python3 -m venv /opt/venv || fail "python3 -m venv failed in the base"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null 2>&1 ||
        fail "podman import of the base failed"
    rm -rf "$rootfs"
}
if [ -n "${BASE_IMAGE:-}" ]; then
    base=$BASE_IMAGE
elif podman image exists "$OFFICIAL_BASE"; then
    base=$OFFICIAL_BASE
elif timeout 30 podman pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
    base=$OFFICIAL_BASE
else
    say "$OFFICIAL_BASE cannot be pulled here; using the local Debian base $LOCAL_BASE"
    podman image exists "$LOCAL_BASE" || build_local_base
    base=$LOCAL_BASE
fi
say "base image: $base ($(elapsed))"

# can podman run containers here as it is? Not always: crun refuses hosts with hybrid cgroups (v1 + v2), and
# without CAP_SYS_RESOURCE podman's default ulimits cannot be set. Then: runc, this shell's limits, and
# builds in chroot isolation (no OCI runtime)
PODMAN=(podman)
BUILD_OPTS=()
RUN_OPTS=()
if ! podman run --rm "$base" true >"$WORK/probe.log" 2>&1; then
    if ! command -v runc >/dev/null; then
        { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; } || fail "podman cannot run containers: $(tail -n 1 "$WORK/probe.log")"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null 2>&1 || fail "apt-get install runc failed"
    fi
    PODMAN=(podman --runtime runc)
    BUILD_OPTS=(--isolation chroot)
    RUN_OPTS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=16384:16384)
    why=$(tail -n 1 "$WORK/probe.log")
    "${PODMAN[@]}" run --rm "${RUN_OPTS[@]}" "$base" true >"$WORK/probe.log" 2>&1 ||
        unable "podman with crun nor runc: $(tail -n 1 "$WORK/probe.log")"
    say "podman's defaults cannot run containers here (${why:0:100}): using runc, this shell's ulimits, chroot builds"
fi

# -- 3. torch's CPU wheel --------------------------------------------------------------------------
mkdir -p deploy/wheels
wheel_ok() { ls deploy/wheels/"${TORCH_SPEC/==/-}"*.whl >/dev/null 2>&1; }
if ! wheel_ok; then
    dl=("$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11
        --platform "manylinux_2_28_$(uname -m)" -d deploy/wheels "$TORCH_SPEC")
    if "$PY" -c "import urllib.request; urllib.request.urlopen('https://download.pytorch.org/whl/cpu/torch/', timeout=5)" \
        2>/dev/null; then
        "${dl[@]}" --index-url https://download.pytorch.org/whl/cpu || true
    fi
    wheel_ok || "${dl[@]}" || true # the host's configured index (a mirror, find-links)
    wheel_ok || cp /opt/wheels/"${TORCH_SPEC/==/-}"*cp311*.whl deploy/wheels/ 2>/dev/null || true
    wheel_ok || fail "no $TORCH_SPEC wheel for Python 3.11 could be downloaded into deploy/wheels"
fi
wheel=$(ls deploy/wheels/"${TORCH_SPEC/==/-}"*.whl | head -n 1)
case "$wheel" in
*+cpu*) say "torch: $wheel" ;;
*) say "torch: $wheel is not a +cpu build: only PyPI's CUDA build was available, the image carries CUDA (several GB)" ;;
esac

# -- 4. build ----------------------------------------------------------------------------------------
# the host's trusted CAs (a TLS-inspecting proxy's among them) for the build's downloads: mounted during
# RUN steps only, not kept in the image (Debian's pip, in the local base, reads this bundle)
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    BUILD_OPTS+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
say "building $IMAGE from deploy/Dockerfile on $base"
podman build "${BUILD_OPTS[@]}" -f deploy/Dockerfile --ignorefile deploy/Dockerfile.dockerignore \
    --build-arg BASE_IMAGE="$base" -t "$IMAGE" . >"$WORK/build.log" 2>&1 ||
    { tail -n 30 "$WORK/build.log" >&2; fail "podman build failed (log above)"; }
say "built $IMAGE, $(podman image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f GB", $1/1e9}') ($(elapsed))"
"${PODMAN[@]}" run --rm "${RUN_OPTS[@]}" "$IMAGE" --help >/dev/null || fail "the image's entry point does not run"

# -- 5. the compose swarm, from docker-compose.yml ---------------------------------------------------
# each service's command, environment and mounts as podman arguments (named volumes -> $NAME-<volume>,
# ./files -> deploy/files); restart and published ports are left out: a failure should show, and
# the swarm talks over the podman network only
"$PY" - "$NAME" "$ROOT/deploy" >"$WORK/services.sh" <<'PYEOF' || fail "cannot read deploy/docker-compose.yml"
import shlex, sys
from pathlib import Path
import yaml

name, deploy = sys.argv[1], Path(sys.argv[2])
services = yaml.safe_load((deploy / "docker-compose.yml").read_text())["services"]
for svc in ("bootstrap", "peer1", "peer2"):
    s = services[svc]
    args = []
    env = s.get("environment") or {}
    for k, v in env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env):
        args += ["-e", f"{k}={v}"]
    for vol in s.get("volumes", []):
        src, rest = vol.split(":", 1)
        src = str((deploy / src).resolve()) if src.startswith((".", "/")) else f"{name}-{src}"
        args += ["-v", f"{src}:{rest}"]
    print(f"{svc}_ARGS=({shlex.join(args)})")
    print(f"{svc}_CMD=({shlex.join(s['command'])})")
PYEOF
# shellcheck disable=SC1091
source "$WORK/services.sh"

podman network create "$NAME" >/dev/null || fail "podman network create failed"
for v in shared bootstrap-data peer1-data peer2-data; do podman volume create "$NAME-$v" >/dev/null; done
start() { # service
    local args="$1_ARGS[@]" cmd="$1_CMD[@]"
    "${PODMAN[@]}" run -d "${RUN_OPTS[@]}" --name "$NAME-$1" --network "$NAME" --network-alias "$1" "${!args}" "$IMAGE" "${!cmd}" \
        >/dev/null 2>>"$WORK/podman.log" || fail "podman run $1 failed"
}
start bootstrap
# compose: the peers wait for the bootstrap's health check (test -s /shared/bootstrap.maddrs)
for _ in $(seq 40); do
    "${PODMAN[@]}" exec "$NAME-bootstrap" test -s /shared/bootstrap.maddrs 2>/dev/null && break
    [ "$(podman inspect -f '{{.State.Running}}' "$NAME-bootstrap")" = true ] || fail "the bootstrap node exited"
    sleep 3
done
"${PODMAN[@]}" exec "$NAME-bootstrap" test -s /shared/bootstrap.maddrs || fail "the bootstrap node wrote no address in 120 s"
say "bootstrap node up: $(head -n 1 "$(podman volume inspect -f '{{.Mountpoint}}' "$NAME-shared")/bootstrap.maddrs")"
start peer1
start peer2

ip_of() { podman inspect -f "{{(index .NetworkSettings.Networks \"$NAME\").IPAddress}}" "$NAME-$1"; }
cp deploy/prometheus.yml "$WORK/prometheus.yml"
for c in bootstrap peer1 peer2; do sed -i "s/\"$c:/\"$(ip_of "$c"):/" "$WORK/prometheus.yml"; done
PROM_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus-data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!

# -- 6. checks ---------------------------------------------------------------------------------------
rounds_file() { echo "$(podman volume inspect -f '{{.Mountpoint}}' "$NAME-$1-data")/rounds.jsonl"; }
verdict=
for _ in $(seq 60); do # up to 5 minutes for MIN_ROUNDS rounds of 10 s
    for c in bootstrap peer1 peer2; do
        [ "$(podman inspect -f '{{.State.Running}}' "$NAME-$c")" = true ] || fail "$c exited"
    done
    verdict=$("$PY" - "$MIN_ROUNDS" "$(rounds_file peer1)" "$(rounds_file peer2)" <<'PYEOF'
import json, sys
from pathlib import Path

need, logs = int(sys.argv[1]), sys.argv[2:]
applied = []
for f in logs:
    p = Path(f)
    lines = p.read_text().splitlines() if p.exists() else []
    applied.append({r["round"]: r for r in map(json.loads, lines) if r.get("event") == "applied"})
# the weights' hash is taken every few rounds (None in between): compare where both peers took it
common = sorted(q for q in set(applied[0]) & set(applied[1]) if applied[0][q]["sha256"] and applied[1][q]["sha256"])
bad = [q for q in common if applied[0][q]["sha256"] != applied[1][q]["sha256"]]
if bad:
    print(f"FAIL the peers' weights differ at round {bad[0]}")
elif min(map(len, applied)) >= need and common and all(any(r["peers"] >= 2 for r in a.values()) for a in applied):
    q = common[-1]
    print(
        f"OK peers applied {len(applied[0])} and {len(applied[1])} rounds, with both peers' contributions; "
        f"same hash at the {len(common)} hashed rounds both applied, round {q}: {applied[0][q]['sha256'][:12]}"
    )
else:
    print(f"WAIT rounds applied: {len(applied[0])}, {len(applied[1])}; hashed by both: {len(common)}")
PYEOF
) || verdict="FAIL cannot read the peers' round logs"
    case "$verdict" in OK*) break ;; FAIL*) fail "${verdict#FAIL }" ;; esac
    sleep 5
done
case "$verdict" in OK*) say "${verdict#OK }" ;; *) fail "fewer than $MIN_ROUNDS rounds by both peers in 5 minutes (${verdict#WAIT })" ;; esac

up=
for _ in $(seq 24); do # Prometheus scrapes every 5 s
    kill -0 "$PROM_PID" 2>/dev/null || { tail -n 5 "$WORK/prometheus.log" >&2; fail "prometheus exited"; }
    up=$("$PY" - "$PROM_PORT" <<'PYEOF'
import json, sys, urllib.request

try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/v1/query?query=up", timeout=5) as r:
        res = json.load(r)["data"]["result"]
except OSError:
    res = []
print(" ".join(sorted(f"{s['metric']['job']}/{s['metric']['instance']}={s['value'][1]}" for s in res)))
PYEOF
)
    [ "$(grep -o '=1' <<<"$up" | wc -l)" -eq 3 ] && break
    sleep 5
done
[ "$(grep -o '=1' <<<"$up" | wc -l)" -eq 3 ] || fail "Prometheus does not see all three targets up: ${up:-no answer}"
say "Prometheus: up == 1 for $up"
say "PASSED in $(elapsed)"
