#!/usr/bin/env bash
# The kind end-to-end suite of EventStream. Needs Docker (a running daemon), kind, kubectl, helm,
# cargo and what cargo needs to build librdkafka on this host (a C and a C++ compiler, make,
# pkg-config, the OpenSSL headers); runs on any such machine and in CI (.github/workflows/e2e.yml).
# On the development machines, where Docker cannot run, the no-cluster run
# (`cargo test -p eventstream-e2e`) covers the data path instead.
#
#   e2e/kind.sh            build the image, create a kind cluster, install Kafka (KRaft),
#                          PostgreSQL and the chart, run the Rust kind suite, delete the cluster
#
# Environment:
#   KIND_CLUSTER        cluster name (default eventstream-e2e); it must not exist yet
#   KIND_NODE_IMAGE     node image (default kindest/node:v1.33.1: Kubernetes 1.33, the oldest supported)
#   E2E_IMAGE           image to build and load (default ghcr.io/eventstream-dev/eventstream:e2e):
#                       [registry[:port]/]path[:tag]. Without a tag, or with `latest`, it is used
#                       as <repository>:e2e (Kubernetes would try to pull a `latest` image);
#                       a digest is refused (kind loads images by name)
#   E2E_SKIP_BUILD=1    use an E2E_IMAGE already in the local Docker instead of building it
#   E2E_KEEP_CLUSTER=1  keep the cluster at the end (its kubeconfig path is printed)
#   E2E_ARTIFACTS       where logs and events go on failure (default ./test-artifacts/e2e, git-ignored)
#   E2E_TEST_ARGS       extra arguments for the test binary (e.g. a test name filter)
#
# Every step has a time limit; a missing tool, a failed step or a step over its limit stops the
# script with a message naming it. Whatever the script created (the cluster, its kubeconfig, a
# temp dir) is removed on every exit, after logs and events were collected on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CLUSTER="${KIND_CLUSTER:-eventstream-e2e}"
NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.33.1}"
IMAGE="${E2E_IMAGE:-ghcr.io/eventstream-dev/eventstream:e2e}"
ARTIFACTS="${E2E_ARTIFACTS:-$ROOT/test-artifacts/e2e}"
CHART="$ROOT/charts/eventstream-operator"
OPERATOR_NAMESPACE=eventstream-system

WORK="$(mktemp -d "${TMPDIR:-/tmp}/eventstream-kind.XXXXXX")"
export KUBECONFIG="$WORK/kubeconfig"
CLUSTER_CREATED=0

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nerror: %s\n' "$*" >&2; exit 1; }

# run_limited SECONDS WHAT COMMAND...: runs COMMAND, stops it after SECONDS, names WHAT on failure.
run_limited() {
  local seconds="$1" what="$2" rc=0
  shift 2
  timeout --kill-after=30 "$seconds" "$@" || rc=$?
  if [ "$rc" -eq 124 ]; then
    die "timed out after ${seconds}s: $what"
  elif [ "$rc" -eq 137 ]; then
    die "killed (over its ${seconds}s limit and did not stop, or out of memory): $what"
  elif [ "$rc" -ne 0 ]; then
    die "failed (exit $rc): $what"
  fi
}

need() { # need TOOL HINT
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed: $2"
}

# What rdkafka-sys needs to build librdkafka (features ssl, zstd) for the test binary on this
# host: its configure script requires a C and a C++ compiler, make runs the build, and
# openssl-sys finds OpenSSL through pkg-config. Checked here so a missing package is named at
# once instead of after minutes of compiling, deep in a build script's output.
check_native_build_deps() {
  local hint="on Debian/Ubuntu: apt-get install gcc g++ make pkg-config libssl-dev"
  need cc "a C compiler is needed to build librdkafka ($hint)"
  need c++ "a C++ compiler is needed by librdkafka's configure ($hint)"
  need make "make is needed to build librdkafka ($hint)"
  need pkg-config "pkg-config is needed to find OpenSSL ($hint)"
  pkg-config --exists openssl \
    || die "the OpenSSL development files are missing (pkg-config cannot find openssl; $hint)"
}

collect_diagnostics() {
  step "collecting logs and events into $ARTIFACTS"
  mkdir -p "$ARTIFACTS/pods"
  local limit=60
  timeout "$limit" kubectl get nodes,all,eventstreams,configmaps,pdb -A -o wide \
    >"$ARTIFACTS/objects.txt" 2>&1 || true
  timeout "$limit" kubectl get eventstreams -A -o yaml >"$ARTIFACTS/eventstreams.yaml" 2>&1 || true
  timeout "$limit" kubectl get events -A --sort-by=.lastTimestamp -o wide \
    >"$ARTIFACTS/events.txt" 2>&1 || true
  timeout "$limit" kubectl describe pods -A >"$ARTIFACTS/describe-pods.txt" 2>&1 || true
  local ns pod
  while read -r ns pod; do
    [ -n "$pod" ] || continue
    timeout "$limit" kubectl logs -n "$ns" "$pod" --all-containers --prefix --timestamps \
      >"$ARTIFACTS/pods/${ns}_${pod}.log" 2>&1 || true
    timeout "$limit" kubectl logs -n "$ns" "$pod" --all-containers --prefix --timestamps --previous \
      >"$ARTIFACTS/pods/${ns}_${pod}.previous.log" 2>/dev/null || rm -f "$ARTIFACTS/pods/${ns}_${pod}.previous.log"
  done < <(timeout "$limit" kubectl get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}' 2>/dev/null || true)
  timeout 300 kind export logs "$ARTIFACTS/kind" --name "$CLUSTER" >/dev/null 2>&1 || true
  printf '\n--- operator log (tail) ---\n'
  tail -n 80 "$ARTIFACTS"/pods/"${OPERATOR_NAMESPACE}"_*.log 2>/dev/null || true
  printf '\n--- warning events ---\n'
  grep -i warning "$ARTIFACTS/events.txt" | tail -n 40 || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$CLUSTER_CREATED" -eq 1 ]; then
    if [ "$rc" -ne 0 ]; then
      collect_diagnostics
    fi
    if [ "${E2E_KEEP_CLUSTER:-0}" = "1" ]; then
      printf '\nkeeping cluster %s: export KUBECONFIG=%s\n' "$CLUSTER" "$KUBECONFIG"
      printf 'delete it with: kind delete cluster --name %s\n' "$CLUSTER"
    else
      step "deleting kind cluster $CLUSTER"
      timeout 300 kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" \
        || printf 'warning: could not delete kind cluster %s; run: kind delete cluster --name %s\n' \
          "$CLUSTER" "$CLUSTER" >&2
    fi
  fi
  if [ "${E2E_KEEP_CLUSTER:-0}" != "1" ] || [ "$CLUSTER_CREATED" -eq 0 ]; then
    rm -rf "$WORK"
  fi
  if [ "$rc" -eq 0 ]; then
    step "kind suite passed"
  else
    printf '\nkind suite FAILED (exit %s)\n' "$rc" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "checking tools"
need docker "install Docker Engine (https://docs.docker.com/engine/install/)"
need kind "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
need kubectl "install kubectl (https://kubernetes.io/docs/tasks/tools/)"
need helm "install Helm 3 (https://helm.sh/docs/intro/install/)"
need cargo "install Rust (https://rustup.rs)"
need timeout "install GNU coreutils"
check_native_build_deps
timeout 30 docker info >/dev/null 2>&1 \
  || die "docker is installed but its daemon does not answer (is it running, may this user use it?)"
[ -f "$CHART/Chart.yaml" ] || die "the chart is missing: $CHART/Chart.yaml"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  die "a kind cluster named $CLUSTER exists already; delete it (kind delete cluster --name $CLUSTER) or set KIND_CLUSTER"
fi

step "building the kind suite (cargo test --features kind --no-run) and e2e-image-ref"
run_limited 3600 "building the kind suite" \
  cargo test -p eventstream-e2e --features kind --locked --test kind --no-run
run_limited 600 "building e2e-image-ref" \
  cargo build -p eventstream-e2e --locked --bin e2e-image-ref

# Split E2E_IMAGE as Docker reads it (eventstream_e2e::kind::ImageRef, unit-tested): a shell
# split at the last `:` breaks an untagged image and a registry with a port.
PARSED="$(cargo run --quiet -p eventstream-e2e --locked --bin e2e-image-ref -- "$IMAGE")" \
  || die "E2E_IMAGE=$IMAGE cannot be used (see the error above)"
IMAGE_REPO="" IMAGE_TAG="" LOAD_IMAGE="" RETAGGED=0
while IFS='=' read -r key value; do
  case "$key" in
    repository) IMAGE_REPO="$value" ;;
    tag) IMAGE_TAG="$value" ;;
    reference) LOAD_IMAGE="$value" ;;
    retagged) RETAGGED="$value" ;;
  esac
done <<<"$PARSED"
if [ -z "$IMAGE_REPO" ] || [ -z "$IMAGE_TAG" ] || [ -z "$LOAD_IMAGE" ]; then
  die "e2e-image-ref printed no repository, tag and reference for $IMAGE"
fi
if [ "$RETAGGED" = "1" ]; then
  printf 'note: %s has no tag or the tag "latest", which Kubernetes always pulls; using %s\n' \
    "$IMAGE" "$LOAD_IMAGE"
fi

if [ "${E2E_SKIP_BUILD:-0}" = "1" ]; then
  step "using the existing image $IMAGE"
  docker image inspect "$IMAGE" >/dev/null 2>&1 || die "E2E_SKIP_BUILD=1 but $IMAGE is not in the local Docker"
  if [ "$LOAD_IMAGE" != "$IMAGE" ]; then
    run_limited 60 "docker tag $IMAGE $LOAD_IMAGE" docker tag "$IMAGE" "$LOAD_IMAGE"
  fi
else
  step "building the image $LOAD_IMAGE"
  REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
  run_limited 5400 "docker build of $LOAD_IMAGE" \
    env DOCKER_BUILDKIT=1 docker build --tag "$LOAD_IMAGE" \
      --build-arg VERSION="$IMAGE_TAG" --build-arg REVISION="$REVISION" \
      --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$ROOT"
fi

step "creating kind cluster $CLUSTER ($NODE_IMAGE)"
CLUSTER_CREATED=1
run_limited 600 "kind create cluster" \
  kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --kubeconfig "$KUBECONFIG" --wait 180s

step "loading $LOAD_IMAGE into the cluster"
run_limited 600 "kind load docker-image $LOAD_IMAGE" kind load docker-image "$LOAD_IMAGE" --name "$CLUSTER"

step "installing Kafka (KRaft, one node) and PostgreSQL"
run_limited 120 "kubectl apply e2e/manifests" \
  kubectl apply -f e2e/manifests/kafka.yaml -f e2e/manifests/postgres.yaml
run_limited 420 "Kafka to become ready" kubectl -n kafka rollout status deploy/kafka --timeout=400s
run_limited 320 "PostgreSQL to become ready" kubectl -n postgres rollout status deploy/postgres --timeout=300s

step "installing the chart charts/eventstream-operator"
run_limited 420 "helm install eventstream-operator" \
  helm install eventstream-operator "$CHART" \
    --namespace "$OPERATOR_NAMESPACE" --create-namespace \
    --values e2e/manifests/operator-values.yaml \
    --set image.repository="$IMAGE_REPO" --set image.tag="$IMAGE_TAG" \
    --wait --timeout 400s
run_limited 120 "the EventStream CRD to be established" \
  kubectl wait --for=condition=Established crd/eventstreams.eventstream.dev --timeout=100s

step "running the kind suite"
# shellcheck disable=SC2086 # E2E_TEST_ARGS is a list of arguments on purpose
run_limited 2400 "the kind suite (cargo test -p eventstream-e2e --features kind)" \
  env E2E_KAFKA_BOOTSTRAP=kafka.kafka.svc.cluster.local:9092 \
    E2E_KAFKA_NAMESPACE=kafka E2E_POSTGRES_NAMESPACE=postgres \
    E2E_POSTGRES_URL=postgres://eventstream:eventstream@postgres.postgres.svc.cluster.local:5432/eventstream \
    cargo test -p eventstream-e2e --features kind --locked --test kind -- --test-threads=1 ${E2E_TEST_ARGS:-}
