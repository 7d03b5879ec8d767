#!/usr/bin/env bash
# The Debian packages the tests drive as real programs: Chromium (the SDK in
# a browser), nginx and caddy (the reverse-proxy recipes; nginx is also the
# benchmark's upstream),
# redis-server (the shared store), wrk (the benchmark's load), Node.js and
# npm (the SDK tests). Installs only what is missing, so a machine that has
# them all is left alone and needs no root.
set -euo pipefail
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }
have make || missing+=(make)
have node || missing+=(nodejs)
have npm || missing+=(npm)
have /usr/bin/chromium || missing+=(chromium)
have /usr/sbin/nginx || missing+=(nginx)
have /usr/bin/caddy || missing+=(caddy)
have redis-server || missing+=(redis-server)
have wrk || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "system-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
