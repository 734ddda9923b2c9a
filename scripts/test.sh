#!/usr/bin/env bash
# Runs every test of the workspace. On a fresh machine with only the Rust toolchain it
# first installs what the tests need (PostgreSQL's server binaries for the store suite,
# python3 for script jobs, busybox-static for the Docker tests' image, Chromium and its
# WebDriver for the dashboard's browser test) with apt-get, and
# into target/test-venv, from PyPI: moto (an S3-compatible server) for the object-store
# tests, schemathesis for the API contract test and openapi-python-client for the
# generated-client test, which then must run (DROVER_REQUIRE_S3=1,
# DROVER_REQUIRE_SCHEMATHESIS=1, DROVER_REQUIRE_GENERATOR=1) rather than skip.
# The Docker tests need a reachable Docker engine; DROVER_SKIP_DOCKER_TESTS=1 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v bash >/dev/null 2>&1 || need+=(bash)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
venv=target/test-venv
venv_tools=(moto_server schemathesis openapi-python-client)
venv_ready() {
  for tool in "${venv_tools[@]}"; do [ -x "$venv/bin/$tool" ] || return 1; done
}
if ! venv_ready && ! python3 -m venv --help >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]} (needed by the tests) with apt-get"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! venv_ready; then
  echo "==> installing moto, schemathesis and openapi-python-client into $venv"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]' \
    'schemathesis>=4.32,<5' 'openapi-python-client>=0.29,<0.30'
fi
export DROVER_REQUIRE_S3=1
export DROVER_REQUIRE_SCHEMATHESIS=1
export DROVER_REQUIRE_GENERATOR=1
export DROVER_REQUIRE_BROWSER=1

echo "==> cargo test --workspace"
cargo test --workspace --all-targets "$@"
