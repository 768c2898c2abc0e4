#!/usr/bin/env bash
# Builds kube-apiserver from Debian's `kubernetes` source package (1.20.x, full vendor/)
# with Debian's Go, for machines with no envtest binaries. Run once per machine; the
# result is cached. Usage: build-kube-apiserver.sh DEST_DIR
#
# Why the reflect2 swap: the vendored modern-go/reflect2 1.0.1 crashes under Go >= 1.18
# on the first custom resource; Debian's 1.0.2 is API-compatible and fixes it.
set -euo pipefail
dest=${1:?usage: build-kube-apiserver.sh DEST_DIR}
mkdir -p "$dest"
if [ -x "$dest/kube-apiserver" ]; then echo "kube-apiserver already built: $dest/kube-apiserver"; exit 0; fi

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_pkgs=()
for p in golang-go rsync dpkg-dev golang-github-modern-go-reflect2-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  echo "adding a deb-src entry for bookworm"
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    | sudo_ tee /etc/apt/sources.list.d/kubeforge-src.sources >/dev/null
  need_update=1
fi
if [ ${#need_pkgs[@]} -gt 0 ] || [ -n "${need_update:-}" ]; then
  sudo_ apt-get update -qq
fi
[ ${#need_pkgs[@]} -gt 0 ] && sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"

work=$(mktemp -d "${TMPDIR:-/tmp}/kubeforge-apiserver-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
echo "fetching Debian's kubernetes source package"
apt-get source --download-only kubernetes >/dev/null
dpkg-source --no-check -x ./kubernetes_*.dsc src >/dev/null
src="$work/src"

echo "replacing vendored reflect2 with Debian's 1.0.2"
rm -rf "$src/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"

mkdir -p "$work/.go/src/k8s.io"
ln -s "$src" "$work/.go/src/k8s.io/kubernetes"
cd "$work/.go/src/k8s.io/kubernetes"
echo "building kube-apiserver (several minutes on 2 cores)"
GOPATH="$work/.go" GO111MODULE=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GOCACHE="$work/.gocache" \
  make WHAT=cmd/kube-apiserver KUBE_BUILD_PLATFORMS=linux/$(go env GOARCH) >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
bin=$(find "$src/_output" -type f -name kube-apiserver | head -1)
[ -n "$bin" ] || { echo "build produced no kube-apiserver"; tail -40 "$work/build.log"; exit 1; }
install -m 0755 "$bin" "$dest/kube-apiserver.tmp" && mv "$dest/kube-apiserver.tmp" "$dest/kube-apiserver"
"$dest/kube-apiserver" --version
