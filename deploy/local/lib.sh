# Helpers shared by the local scripts; source it (`. deploy/local/lib.sh`), do not run it.

# need BIN PACKAGE: installs PACKAGE with apt-get when BIN is not on the PATH (nor in /usr/sbin).
need() {
  local bin=$1 pkg=$2
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    echo "installing $pkg" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "$pkg" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$pkg" >/dev/null; }
  fi
}
