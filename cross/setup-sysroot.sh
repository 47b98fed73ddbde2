#!/usr/bin/env bash
# cross/setup-sysroot.sh — builds a PRIVATE target sysroot for cross builds (Debian 12 host).
#
# Owns: DESTDIR (default <repo>/build/sysroot-ARCH) and DESTDIR.apt (its private apt state,
# package lists and downloaded .debs). Nothing else is written, except that the host gets the
# cross compiler and qemu-user (gcc-<triplet>, qemu-user) via apt-get if they are missing.
# The host's package set is otherwise untouched: no `dpkg --add-architecture`, no :ARCH
# packages (multiarch for armhf is broken on this mirror, see shared/notes/TOOLCHAIN.md).
#
# How: a private apt state for ARCH (own lists/cache/status, the host's /etc/apt sources and
# settings, the host's apt hooks cleared) -> `apt-get update` -> resolve the packages below plus
# their dependencies -> `apt-get download` -> `dpkg-deb -x` into the sysroot -> absolute
# symlinks made relative -> cJSON's CMake files (hard-coded /usr) patched to be relocatable.
# The tree is built in DESTDIR.partial and swapped in whole, so DESTDIR is never half-made.
# A stamp makes a re-run a fast no-op until the package list or this script's layout changes.
#
# Usage: cross/setup-sysroot.sh [--force] ARCH [DESTDIR]     ARCH = arm64 | armhf
# Then:  cmake -S . -B build-ARCH -DCMAKE_TOOLCHAIN_FILE=toolchains/<triplet>.cmake
#        (-DSCRM_SYSROOT=DESTDIR or env SCRM_SYSROOT=DESTDIR if not the default)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=cross/lib-host-apt.sh
. "$HERE/lib-host-apt.sh"

# Target packages (exact Debian 12 names; their Depends are added automatically).
PACKAGES=(
  libc6 libc6-dev linux-libc-dev libgcc-s1
  libpaho-mqtt-dev libpaho-mqtt1.3
  libsqlite3-dev libsqlite3-0
  libmbedtls-dev libmbedtls14 libmbedx509-1 libmbedcrypto7
  libcjson-dev libcjson1
  libcmocka-dev libcmocka0
  libssl-dev libssl3
)
# Bump when the way the tree is made changes (extraction, fix-ups), to force a rebuild.
LAYOUT_VERSION=1

die() { echo "error: $*" >&2; exit 1; }
usage() {
  cat >&2 <<'EOF'
usage: cross/setup-sysroot.sh [--force] ARCH [DESTDIR]
  ARCH     arm64 | armhf
  DESTDIR  default <repo>/build/sysroot-ARCH (its private apt state goes to DESTDIR.apt)
  --force  rebuild even if the stamp says the sysroot is up to date
EOF
  exit 2
}

FORCE=0
args=()
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    -h|--help) usage ;;
    -*) echo "error: unknown option $a" >&2; usage ;;
    *) args+=("$a") ;;
  esac
done
if [ "${#args[@]}" -lt 1 ] || [ "${#args[@]}" -gt 2 ]; then usage; fi
ARCH=${args[0]}
case "$ARCH" in
  arm64) TRIPLET=aarch64-linux-gnu;   QEMU=qemu-aarch64; LOADER=lib/ld-linux-aarch64.so.1 ;;
  armhf) TRIPLET=arm-linux-gnueabihf; QEMU=qemu-arm;     LOADER=lib/ld-linux-armhf.so.3 ;;
  *) echo "error: unsupported ARCH '$ARCH' (use arm64 or armhf)" >&2; usage ;;
esac
DEST=${args[1]:-$REPO/build/sysroot-$ARCH}
DEST=$(realpath -m -- "$DEST")
case "$DEST" in
  /|/usr|/usr/*|/lib|/lib/*|/etc|/etc/*|/bin|/sbin|/var|/boot|/root|/home) die "refusing DESTDIR '$DEST'" ;;
esac
APTDIR="$DEST.apt"
NEW="$DEST.partial"
MARKER=.scrm-sysroot          # in the tree: "this directory was made by setup-sysroot.sh"
STAMP=.scrm-sysroot.stamp     # in the tree: key of the package list + layout it was made from

# ---- 1. host tools: cross compiler + qemu-user (installed only if missing) ----
for tool in apt-get apt-cache dpkg-deb dpkg-query realpath flock sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found: this script needs a Debian/Ubuntu host"
done
mapfile -t missing < <(scrm_missing_host_pkgs "gcc-$TRIPLET" qemu-user)
if [ "${#missing[@]}" -ne 0 ]; then
  echo "== host: missing ${missing[*]}"
  scrm_host_apt_install "${missing[@]}"
fi
command -v "$TRIPLET-gcc" >/dev/null 2>&1 || die "$TRIPLET-gcc not on PATH after installing gcc-$TRIPLET"
command -v "$QEMU" >/dev/null 2>&1 || die "$QEMU not on PATH after installing qemu-user"

# ---- 2. fast path: stamp matches and the tree looks whole ----
KEY=$(printf '%s\n' "layout=$LAYOUT_VERSION" "arch=$ARCH" "${PACKAGES[@]}" | sha256sum | cut -d' ' -f1)
tree_ok() {
  [ -f "$1/$STAMP" ] && [ "$(head -n1 "$1/$STAMP")" = "$KEY" ] &&
    [ -e "$1/$LOADER" ] && [ -f "$1/usr/lib/$TRIPLET/libc.so" ] &&
    [ -f "$1/usr/include/MQTTAsync.h" ] &&
    [ -f "$1/usr/lib/$TRIPLET/cmake/eclipse-paho-mqtt-c/eclipse-paho-mqtt-cConfig.cmake" ]
}
if [ "$FORCE" -eq 0 ] && tree_ok "$DEST"; then
  echo "sysroot $ARCH up to date: $DEST"
  exit 0
fi

if [ -e "$DEST" ] && [ ! -e "$DEST/$MARKER" ] && [ -n "$(ls -A "$DEST" 2>/dev/null)" ]; then
  die "$DEST exists, is not empty and was not made by this script: remove it or pick another DESTDIR"
fi
mkdir -p "$APTDIR"
exec 9>"$APTDIR/lock"
if ! flock -n 9; then
  echo "== waiting for another setup-sysroot.sh run on $DEST"
  flock 9
fi
if [ "$FORCE" -eq 0 ] && tree_ok "$DEST"; then   # another run finished it while we waited
  echo "sysroot $ARCH up to date: $DEST"
  exit 0
fi
echo "== building $ARCH sysroot in $DEST"
t0=$SECONDS

# ---- 3. private apt state for ARCH ----
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/state" \
         "$APTDIR/etc/preferences.d" "$APTDIR/debs"
[ -f "$APTDIR/state/status" ] || : > "$APTDIR/state/status"   # empty dpkg status: nothing installed
CONF="$APTDIR/apt.conf"
# Read with `apt-get -c`, i.e. AFTER the host's apt.conf.d: so the host's sources, keys,
# proxy and Acquire settings apply, but its hooks (PackageKit, appstream, dpkg) are cleared
# and every state/cache path is private.
cat > "$CONF" <<EOF
// generated by cross/setup-sysroot.sh — private apt state for the $ARCH sysroot
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
#clear DPkg::Pre-Install-Pkgs;
#clear APT::Architectures;
APT::Architecture "$ARCH";
APT::Architectures { "$ARCH"; };
APT::Install-Recommends "false";
Acquire::Languages "none";
Dir::State "$APTDIR/state";
Dir::State::Lists "$APTDIR/lists";
Dir::State::status "$APTDIR/state/status";
Dir::State::extended_states "$APTDIR/state/extended_states";
Dir::Cache "$APTDIR/cache";
Dir::Cache::archives "$APTDIR/cache/archives";
Dir::Cache::pkgcache "$APTDIR/cache/pkgcache.bin";
Dir::Cache::srcpkgcache "";
Dir::Etc::preferences "$APTDIR/etc/preferences";
Dir::Etc::preferencesparts "$APTDIR/etc/preferences.d";
EOF
papt_get() { apt-get -c "$CONF" "$@"; }
papt_cache() { apt-cache -c "$CONF" "$@"; }

echo "== apt-get update (private $ARCH lists in $APTDIR/lists)"
UPDATE_LOG="$APTDIR/update.log"
update_rc=0
papt_get -q update >"$UPDATE_LOG" 2>&1 || update_rc=$?

# ---- 4. resolve names against the private state ----
found=" $(papt_cache show --no-all-versions "${PACKAGES[@]}" 2>/dev/null | sed -n 's/^Package: //p' | tr '\n' ' ') " || true
unresolved=()
for p in "${PACKAGES[@]}"; do
  case "$found" in *" $p "*) ;; *) unresolved+=("$p") ;; esac
done
if [ "${#unresolved[@]}" -ne 0 ]; then
  echo "error: no $ARCH candidate for: ${unresolved[*]}" >&2
  if [ "$update_rc" -ne 0 ]; then
    echo "       (apt-get update failed, rc=$update_rc; its output:)" >&2
    sed 's/^/       | /' "$UPDATE_LOG" >&2
  fi
  for p in "${unresolved[@]}"; do
    stem=${p%%[0-9.-]*}; stem=${stem%-dev}
    [ -n "$stem" ] || continue
    alt=$(papt_cache pkgnames "$stem" 2>/dev/null | sort | head -n 8 | tr '\n' ' ')
    [ -z "$alt" ] || echo "       names starting '$stem' in the $ARCH index: $alt" >&2
  done
  exit 1
fi
if [ "$update_rc" -ne 0 ]; then
  # Known here: Debian's armhf security index fails its size check on this mirror.
  echo "warning: apt-get update for $ARCH reported errors (rc=$update_rc); continuing with the" >&2
  echo "         indexes that did load (every package resolved). Failed indexes:" >&2
  grep -E '^(E|W|Err):' "$UPDATE_LOG" | grep -v 'Some index files failed' | sed 's/^/         | /' >&2 || true
fi

# Dependency closure: simulate installing into the empty private status.
SIM_LOG="$APTDIR/resolve.log"
if ! papt_get -s -q --no-install-recommends install "${PACKAGES[@]}" >"$SIM_LOG" 2>&1; then
  echo "error: apt could not resolve the $ARCH package set:" >&2
  sed 's/^/       | /' "$SIM_LOG" >&2
  exit 1
fi
# "Inst NAME (VERSION SUITE [ARCH]) [...]" -> NAME VERSION ARCH
mapfile -t resolved < <(sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) [^[]*\[\([^]]*\)\]).*/\1 \2 \3/p' "$SIM_LOG")
[ "${#resolved[@]}" -ge "${#PACKAGES[@]}" ] || { sed 's/^/       | /' "$SIM_LOG" >&2; die "could not parse apt's resolution (see above)"; }
specs=(); files=()
for r in "${resolved[@]}"; do
  read -r name ver parch <<<"$r"
  specs+=("$name=$ver")
  files+=("${name}_${ver//:/%3a}_${parch}.deb")   # apt-get download's file name
done
echo "== ${#specs[@]} packages (${#PACKAGES[@]} asked for + dependencies)"

# ---- 5. download (files already in $APTDIR/debs with the right name are reused) ----
if id -u _apt >/dev/null 2>&1; then chown _apt "$APTDIR/debs" 2>/dev/null || true; fi
( cd "$APTDIR/debs" && papt_get -q download "${specs[@]}" ) >"$APTDIR/download.log" 2>&1 || {
  sed 's/^/       | /' "$APTDIR/download.log" >&2; die "apt-get download failed for $ARCH"; }
for f in "${files[@]}"; do
  [ -f "$APTDIR/debs/$f" ] || die "expected $APTDIR/debs/$f after apt-get download"
done
# drop .debs of versions no longer wanted
for f in "$APTDIR/debs"/*.deb; do
  b=${f##*/}; keep=0
  for w in "${files[@]}"; do [ "$b" = "$w" ] && { keep=1; break; }; done
  [ "$keep" -eq 1 ] || rm -f -- "$f"
done

# ---- 6. extract into DEST.partial ----
cleanup() { [ -n "${NEW:-}" ] && [ -e "$NEW/$MARKER" ] && rm -rf -- "$NEW"; return 0; }
trap cleanup EXIT
if [ -e "$NEW" ]; then
  [ -e "$NEW/$MARKER" ] || [ -z "$(ls -A "$NEW")" ] || die "$NEW exists and was not made by this script"
  rm -rf -- "$NEW"
fi
mkdir -p "$NEW"
: > "$NEW/$MARKER"
for f in "${files[@]}"; do
  dpkg-deb -x "$APTDIR/debs/$f" "$NEW" || die "dpkg-deb -x failed on $f"
done
rm -rf -- "$NEW/usr/share/doc" "$NEW/usr/share/man" "$NEW/usr/share/info" "$NEW/usr/share/lintian"

# ---- 7. absolute symlinks -> relative (libfoo.so -> /lib/<triplet>/libfoo.so.N) ----
nlinks=0
while IFS= read -r -d '' link; do
  target=$(readlink -- "$link")
  case "$target" in /*) ;; *) continue ;; esac
  rel=$(realpath -s -m --relative-to="$(dirname -- "$link")" -- "$NEW$target")
  ln -sfn -- "$rel" "$link"
  nlinks=$((nlinks + 1))
done < <(find "$NEW" -type l -print0)
left=$(find "$NEW" -type l -lname '/*' | head -n 5)
[ -z "$left" ] || die "absolute symlinks left in the sysroot: $left"

# ---- 8. relocatable CMake files ----
# cJSON's export files hard-code /usr (IMPORTED_LOCATION /usr/lib/<triplet>/libcjson.so...,
# include dir /usr/include): in a sysroot they would point at the HOST. Make them relative to
# their own location. (Paho's and cmocka's files are already relative to their location.)
CJ="$NEW/usr/lib/$TRIPLET/cmake/cJSON"
if [ -d "$CJ" ]; then
  # shellcheck disable=SC2016  # the ${...} are CMake's, not the shell's
  for f in "$CJ"/*.cmake; do
    grep -q '"/usr[/"]' "$f" || continue
    sed -i \
      -e '1i get_filename_component(_scrm_cjson_prefix "${CMAKE_CURRENT_LIST_DIR}/../../../.." ABSOLUTE) # patched by cross/setup-sysroot.sh (was hard-coded /usr)' \
      -e 's#"/usr/#"${_scrm_cjson_prefix}/#g; s#"/usr"#"${_scrm_cjson_prefix}"#g' "$f"
  done
fi
bad=$(grep -rlE '(IMPORTED_LOCATION[A-Z_]*|INTERFACE_INCLUDE_DIRECTORIES|INTERFACE_LINK_LIBRARIES) +"/(usr|lib)' \
        "$NEW/usr/lib/$TRIPLET/cmake" "$NEW/usr/share/cmake" "$NEW/usr/lib/cmake" 2>/dev/null || true)
[ -z "$bad" ] || echo "warning: CMake files still naming absolute host paths: $bad" >&2

# ---- 9. runtime: keep qemu's loader off the host's /etc/ld.so.cache ----
# Under `qemu -L <sysroot>` the target's ld.so opens /etc/ld.so.cache, which would be the host's
# when the sysroot has none. An empty file is rejected by ld.so, which then searches its
# built-in /lib/<triplet>, /usr/lib/<triplet>, ... (all inside the sysroot).
mkdir -p "$NEW/etc"
: > "$NEW/etc/ld.so.cache"

# ---- 10. sanity, manifest, stamp, swap in ----
for f in "$LOADER" "usr/lib/$TRIPLET/libc.so" usr/include/MQTTAsync.h usr/include/sqlite3.h \
         usr/include/mbedtls/ctr_drbg.h usr/include/cjson/cJSON.h usr/include/cmocka.h \
         usr/include/openssl/ssl.h "usr/lib/$TRIPLET/libpaho-mqtt3as.so" \
         "usr/lib/$TRIPLET/libssl.so" "usr/lib/$TRIPLET/libmbedtls.so" \
         "usr/lib/$TRIPLET/libcjson.so" "usr/lib/$TRIPLET/libcmocka.so" \
         "usr/lib/$TRIPLET/libsqlite3.so" "usr/lib/$TRIPLET/pkgconfig/libcjson.pc" \
         "usr/lib/$TRIPLET/cmake/eclipse-paho-mqtt-c/eclipse-paho-mqtt-cConfig.cmake"; do
  [ -e "$NEW/$f" ] || die "sysroot incomplete: $f missing (package list or Debian layout changed?)"
done
printf '%s\n' "${specs[@]}" > "$NEW/.scrm-sysroot.packages"
{ echo "$KEY"; echo "arch=$ARCH triplet=$TRIPLET made=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; } > "$NEW/$STAMP"

if [ -e "$DEST" ]; then
  rm -rf -- "$DEST.old"
  mv -- "$DEST" "$DEST.old"
fi
mv -- "$NEW" "$DEST"
rm -rf -- "$DEST.old"
trap - EXIT
echo "== $ARCH sysroot ready: $DEST (${#specs[@]} packages, $nlinks symlinks made relative, $((SECONDS - t0)) s)"
