# Sourced by scripts/test and scripts/dev: installs the Debian 12 packages Sluice needs to build,
# test and run, skipping apt when everything is already there.
SLUICE_DEBS="build-essential cmake pkg-config git librdkafka-dev libpq-dev postgresql
libmicrohttpd-dev libjson-c-dev libcurl4-openssl-dev libssl-dev zlib1g-dev libavro-dev
duktape-dev libcmocka-dev libjemalloc-dev kcat python3 clang clang-format libclang-rt-14-dev
default-jdk-headless maven docker-compose"
# Node.js and npm run a real SDK in tests/e2e/test_sdk_node.py. They are installed from Debian
# only when there is no `npm` at all: a Node.js from elsewhere (e.g. nodesource's nodejs, which
# brings its own npm) conflicts with Debian's npm package.
SLUICE_NODE_DEBS="nodejs npm"

sluice_install_deps() {
  local missing=""
  for p in $SLUICE_DEBS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  command -v npm >/dev/null 2>&1 || missing="$missing $SLUICE_NODE_DEBS"
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages:$missing; run as root or: sudo apt-get install$missing" >&2
    return 1
  fi
  echo "installing:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}
