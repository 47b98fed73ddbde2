# shellcheck shell=bash
# cross/lib-host-apt.sh — sourced (not run) by cross/setup-host.sh and cross/setup-sysroot.sh.
# Owns: the two helpers that decide whether the HOST's apt must be touched at all, and that
# install host packages when it must (apt-get update only when the install cannot work
# without it). Never removes or upgrades anything on purpose: plain `apt-get install`.

# scrm_missing_host_pkgs PKG... : print the ones dpkg does not report as installed.
scrm_missing_host_pkgs() {
  local p st
  for p in "$@"; do
    # one line per installed instance (a multiarch host may have pkg:amd64 and pkg:arm64)
    st=$(dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null || true)
    case "$st" in
      installed | installed$'\n'* | *$'\n'installed | *$'\n'installed$'\n'*) ;;
      *) printf '%s\n' "$p" ;;
    esac
  done
}

# scrm_host_apt_install PKG... : install on the host with apt-get (root only).
scrm_host_apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: need root to install host packages: $*" >&2
    echo "       run as root, or: sudo apt-get install --no-install-recommends $*" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
  # A fresh machine has no package lists: update first. Otherwise try the install
  # with the lists there are, and update only if that fails (stale lists give 404s).
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    echo "== host: no apt package lists yet: apt-get update"
    apt-get -q -o DPkg::Lock::Timeout=300 update || echo "warning: apt-get update reported errors; trying the install anyway" >&2
  fi
  echo "== host: apt-get install $*"
  if apt-get "${apt_opts[@]}" install "$@"; then
    return 0
  fi
  echo "== host: install failed; refreshing package lists and retrying once"
  apt-get -q -o DPkg::Lock::Timeout=300 update || echo "warning: apt-get update reported errors; retrying the install anyway" >&2
  if ! apt-get "${apt_opts[@]}" install "$@"; then
    echo "error: apt-get install failed for: $*" >&2
    return 1
  fi
}
