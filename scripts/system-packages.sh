#!/usr/bin/env bash
# Debian packages the emulated testbed and its tests need (namespaces, sshd, link checks, stand-ins), and the
# headless browser the page tests drive (chromium + its chromedriver, the same Debian version).
# Installs only what is missing; does nothing without root or apt-get (the local testbed needs none of them).
set -euo pipefail
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in openssh-server openssh-client iproute2 iperf3 ethtool iputils-ping procps tmux util-linux \
           chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "[setup] installing ${need[*]}"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
