#!/usr/bin/env bash
# Debian/Ubuntu packages kubeforge's local runtime and tests need. Idempotent.
#   etcd-server  the API server's store
#   openssl      keys for the local API server's service accounts
#   golang-go, rsync, dpkg-dev  building kube-apiserver from Debian's source package (once)
#   lua5.1, lua-cjson  running the Argo CD health check in tests (Argo CD speaks Lua 5.1)
#   prometheus, prometheus-alertmanager  the local platform's monitoring; promtool tests the alert rules
#   redis-server  the Redis online store that feature store tests start on 127.0.0.1
#   libgomp1     OpenMP, which LightGBM's and XGBoost's wheels load
set -euo pipefail
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
pkgs=(etcd-server openssl golang-go rsync dpkg-dev golang-github-modern-go-reflect2-dev python3-venv lua5.1 lua-cjson redis-server prometheus prometheus-alertmanager libgomp1)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts these as services on install; kubeforge and its tests run their own on free ports.
if command -v systemctl >/dev/null 2>&1; then
  for service in etcd redis-server prometheus prometheus-alertmanager; do sudo_ systemctl disable --now "$service" >/dev/null 2>&1 || true; done
fi
