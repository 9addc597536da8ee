# Sourced (not run) by the install-*.sh scripts: the one definition of how they check
# for Debian packages, install the missing ones, and pip-install for the python3 on PATH.

# True when the Debian package NAME is installed.
package_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# Installs those of the given Debian packages that are missing (apt-get update first);
# does nothing, not even the update, when all are present. Leading options
# (`--no-install-recommends`) go to apt-get install.
install_missing_packages() {
  local options=() missing=() package
  while [ $# -gt 0 ] && [[ $1 == --* ]]; do
    options+=("$1")
    shift
  done
  for package in "$@"; do
    package_installed "$package" || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${options[@]}" "${missing[@]}" >/dev/null
  fi
}

# Makes `python3 -m pip` work for the python3 on PATH.
ensure_pip() {
  if ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-pip >/dev/null
  fi
}

# pip install for the python3 on PATH. Debian's system python refuses pip installs
# without --break-system-packages (PEP 668), so that is the fallback.
pip_install() {
  PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet "$@" 2>/dev/null ||
    PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet --break-system-packages "$@"
}
