#!/usr/bin/env bash
# Runs Skiff's whole test suite on a fresh machine, as root: installs what the tests need, then
# `cargo test --workspace --all-features`. Extra arguments go to cargo test (e.g. a test name).
#
# The tests start real servers and containers (namespaces, overlayfs, cgroups) and drive them
# with the real kubectl, so they need root, and:
#   busybox-static   the rootfs of the test images
#   docker-registry  a local OCI registry on 127.0.0.1 to pull the test images from
#   kubectl          /usr/bin/kubectl (v1.32 ships with this project's machines)
#   curl             the HTTPS client of the bad-input corpus (tests/api_bad_input.rs)
#   iproute2, util-linux, bsdutils
#                    ip/nsenter/unshare for the network tests' own namespaces, script(1) for
#                    the terminal that `kubectl exec -it` / `attach -it` tests give kubectl
#   python3-venv     a venv at target/pyvenv with the `kubernetes` package from PyPI, the second
#                    independent client (tests/python_client.rs)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh must run as root (the tests run real containers): sudo scripts/test.sh" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
updated=""
apt_update() {
  if [ -z "$updated" ]; then
    apt-get update -qq
    updated=1
  fi
}

missing=()
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || missing+=(busybox-static)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v script >/dev/null 2>&1 || missing+=(bsdutils)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt_update
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x /usr/bin/kubectl ]; then
  # Debian bookworm itself has no kubectl; the machines of this project have one installed
  # from the Kubernetes apt repository. Use apt if a source for it is configured.
  apt_update
  if apt-cache policy kubectl | grep -q 'Candidate: [0-9]'; then
    echo "installing kubectl"
    apt-get install -y -qq kubectl
  else
    echo "error: /usr/bin/kubectl is missing and no apt source offers kubectl." >&2
    echo "Install kubectl v1.32 at /usr/bin/kubectl (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/)" >&2
    exit 1
  fi
fi
echo "kubectl: $(/usr/bin/kubectl version --client 2>/dev/null | head -n 1)"

# The Python client's venv: made once, the package installed once (a pinned version).
PY_KUBERNETES="kubernetes==37.0.2"
venv=target/pyvenv
if ! "$venv/bin/python" -c 'import kubernetes' >/dev/null 2>&1; then
  if ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "installing python3-venv"
    apt_update
    apt-get install -y -qq --no-install-recommends python3 python3-venv
  fi
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$PY_KUBERNETES"
fi
echo "python client: $("$venv/bin/python" -c 'import kubernetes; print("kubernetes", kubernetes.__version__)')"

# A one-off run gains nothing from incremental compilation, which doubles the build's size on
# disk; CI machines share their disk (one CI run failed with "No space left on device").
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi
echo "disk free for the build: $(df -h --output=avail . | tail -n 1 | tr -d ' ')"

# Tests run side by side, each with its own server; the two cores are the limit, not memory.
# --no-fail-fast: one failing test binary must not hide the results of the others.
exec cargo test --workspace --all-features --no-fail-fast "$@"
