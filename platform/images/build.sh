#!/usr/bin/env bash
# Build kubeforge's container images from the repository root, and push them with PUSH=1 (docs/images.md).
#
#   REGISTRY   where the images are named and pushed (ghcr.io/kubeforge)
#   VERSION    their tag (the kubeforge version in src/kubeforge/__init__.py)
#   REVISION   the commit recorded in their labels (git rev-parse HEAD)
#   DOCKER     the engine's command (docker; podman takes the same arguments)
#   BUILD_ARGS more `docker build` options, e.g. "--build-arg TORCH_INDEX_URL=... --platform linux/arm64"
#   DRY_RUN=1  print the commands instead of running them
set -euo pipefail
cd "$(dirname "$0")/../.."

REGISTRY=${REGISTRY:-ghcr.io/kubeforge}
VERSION=${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/kubeforge/__init__.py)}
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
DOCKER=${DOCKER:-docker}
read -r -a extra <<<"${BUILD_ARGS:-}"

# Dockerfile, then image name and tag under REGISTRY.
IMAGES=(
  "operators/Dockerfile kubeforge-operator:$VERSION"
  "serving/Dockerfile kubeforge-gateway:$VERSION"
  "serving/triton/Dockerfile kubeforge-triton:$VERSION"
  "training/Dockerfile kubeforge-trainer:$VERSION"
  "training/Dockerfile.cuda kubeforge-trainer:$VERSION-cuda"
  "serving/mlflow/Dockerfile kubeforge-mlflow:$VERSION"
)

run() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "$*"
  else
    "$@"
  fi
}

if [[ ${DRY_RUN:-0} != 1 ]] && ! command -v "$DOCKER" >/dev/null; then
  echo "images: $DOCKER not found: install Docker 23 or later (BuildKit), or set DOCKER=podman" >&2
  exit 1
fi
for entry in "${IMAGES[@]}"; do
  read -r dockerfile image <<<"$entry"
  echo "== $REGISTRY/$image from $dockerfile" >&2
  run "$DOCKER" build -f "$dockerfile" -t "$REGISTRY/$image" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" "${extra[@]}" .
done
if [[ ${PUSH:-0} == 1 ]]; then
  for entry in "${IMAGES[@]}"; do
    read -r _ image <<<"$entry"
    run "$DOCKER" push "$REGISTRY/$image"
  done
fi
