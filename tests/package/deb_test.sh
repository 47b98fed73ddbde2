#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tests/package/deb_test.sh — the Debian packages of this build, checked the way an
# operations team meets them (run by ctest, tests/package/CMakeLists.txt; once per
# preset, so for amd64 natively and for arm64/armhf under qemu-user):
#
#   build    cpack -> scrm-agent_<ver>_<arch>.deb, libscrm-dev_<ver>_<arch>.deb,
#            scrm-fleet_<ver>_<arch>.deb (the operations console, central side)
#   deb      control fields (architecture of the TARGET), Depends against every
#            NEEDED soname, conffiles, file lists; `dpkg --root` install into a
#            throwaway root (maintainer scripts run DPKG_ROOT-aware: user scrm,
#            /var/lib/scrm 2770, systemd state), the installed binaries run,
#            `pkg-config scrm` + a program compiled and linked against the
#            installed header and library; reinstall keeps an edited conffile;
#            remove, then purge keeps the store (unsent sales) and the user;
#            scrm-fleet apart: not in scrm-agent (`scrmctl fleet` without it
#            says where it is), installed alone it runs, with scrmctl too
#   unit     systemd-analyze verify + security of the installed unit (skipped, 77,
#            without systemd-analyze)
#   notify   the installed daemon started as systemd would (NOTIFY_SOCKET,
#            WATCHDOG_USEC): READY, WATCHDOG, RELOADING, STOPPING (notify_listen.c)
#
# Environment (set by CMake): SCRM_PKG_BUILD_DIR, SCRM_PKG_DIR (the .debs),
# SCRM_PKG_WORK (scratch; kept after a run for inspection), SCRM_PKG_ARCH,
# SCRM_PKG_VERSION, SCRM_PKG_LIBDIR, SCRM_PKG_CC, SCRM_PKG_SYSROOT and
# SCRM_PKG_TRIPLET (cross only), SCRM_PKG_SMOKE_SRC, SCRM_PKG_NOTIFY_LISTEN,
# SCRM_TEST_EMULATOR ("qemu-aarch64 -L <sysroot>" for cross builds, else empty).
#
# Needs dpkg, dpkg-deb, readelf, pkg-config; root, or fakeroot (dpkg --root
# chowns files). Prints "ok  <check>" per check and exits 1 at the first "FAIL:".
set -euo pipefail

MODE=${1:?usage: deb_test.sh build|deb|unit|notify}
: "${SCRM_PKG_DIR:?}" "${SCRM_PKG_WORK:?}" "${SCRM_PKG_ARCH:?}" "${SCRM_PKG_VERSION:?}"
VER=$SCRM_PKG_VERSION
ARCH=$SCRM_PKG_ARCH
LIBDIR=${SCRM_PKG_LIBDIR:-lib}
# Target binaries run through the emulator (word-split on purpose: no quoting,
# as in tests/support/harness.c).
read -r -a EMU <<<"${SCRM_TEST_EMULATOR:-}"
AGENT_DEB=$SCRM_PKG_DIR/scrm-agent_${VER}_${ARCH}.deb
DEV_DEB=$SCRM_PKG_DIR/libscrm-dev_${VER}_${ARCH}.deb
FLEET_DEB=$SCRM_PKG_DIR/scrm-fleet_${VER}_${ARCH}.deb

fail() { printf 'FAIL: %s\n' "$*"; exit 1; }
ok() { printf 'ok   %s\n' "$*"; }
say() { printf '\n== %s\n' "$*"; }
run_target() { "${EMU[@]}" "$@"; }
need() { command -v "$1" >/dev/null 2>&1 || fail "'$1' not found (apt-get install $2)"; }

need dpkg dpkg
need dpkg-deb dpkg
need readelf binutils

# dpkg --root chowns what it unpacks: root, or fakeroot with a saved state.
WRAP=()
DPKG_EXTRA=()
if [ "$(id -u)" -ne 0 ]; then
	command -v fakeroot >/dev/null 2>&1 || { echo "SKIP: needs root or fakeroot"; exit 77; }
	FAKEROOT_STATE=$SCRM_PKG_WORK/$MODE.fakeroot
	WRAP=(fakeroot -i "$FAKEROOT_STATE" -s "$FAKEROOT_STATE")
	DPKG_EXTRA=(--force-not-root)
fi

# ---- the throwaway root ----
W=$SCRM_PKG_WORK/$MODE
ROOT=$W/root

# dpkg on ROOT: maintainer scripts run outside a chroot with DPKG_ROOT=$ROOT
# (the root has no shell, libc or adduser of its own). --force-depends: the
# root holds no libc6, libsqlite3-0, ... packages (Depends are checked apart).
rdpkg() {
	"${WRAP[@]}" dpkg --root="$ROOT" "${DPKG_EXTRA[@]}" --force-script-chrootless --force-depends \
		--log="$W/dpkg.log" "$@" </dev/null >>"$W/dpkg.out" 2>&1 || {
		tail -n 40 "$W/dpkg.out"
		fail "dpkg $*"
	}
}
rstatus() { dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true; }

make_root() {
	rm -rf "$W"
	[ ! -e "$W" ] || { chmod -R u+rwX "$W" 2>/dev/null || true; rm -rf "$W"; }
	[ -z "${FAKEROOT_STATE:-}" ] || : >"$FAKEROOT_STATE"
	mkdir -p "$ROOT/var/lib/dpkg/info" "$ROOT/var/lib/dpkg/updates" "$ROOT/var/lib/dpkg/triggers" "$ROOT/etc"
	: >"$ROOT/var/lib/dpkg/status"
	: >"$ROOT/var/lib/dpkg/available"
	# The accounts of a minimal Debian system; postinst adds scrm with
	# useradd --prefix (adduser cannot write into another root).
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
	printf 'root:x:0:\n' >"$ROOT/etc/group"
	printf 'root:*:19000:0:99999:7:::\n' >"$ROOT/etc/shadow"
	printf 'root:*::\n' >"$ROOT/etc/gshadow"
	chmod 0640 "$ROOT/etc/shadow" "$ROOT/etc/gshadow"
	: >"$W/dpkg.out"
	# A root for another architecture: the one dpkg running here knows as native
	# is the host's, so the target's is declared in the root's own database.
	if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
		"${WRAP[@]}" dpkg --root="$ROOT" "${DPKG_EXTRA[@]}" --add-architecture "$ARCH"
	fi
}

install_debs() {
	if [ ! -f "$AGENT_DEB" ] || [ ! -f "$DEV_DEB" ]; then
		fail "packages missing in $SCRM_PKG_DIR (the package_build test makes them)"
	fi
	make_root
	rdpkg -i "$AGENT_DEB" "$DEV_DEB"
	[ "$(rstatus scrm-agent)" = "ii " ] || fail "scrm-agent not installed: status '$(rstatus scrm-agent)'"
	[ "$(rstatus libscrm-dev)" = "ii " ] || fail "libscrm-dev not installed: status '$(rstatus libscrm-dev)'"
}

field() { dpkg-deb -f "$1" "$2"; }
passwd_field() { awk -F: -v n="$2" -v f="$3" '$1 == n { print $f; exit }' "$ROOT/etc/$1"; }

# ============================================================================
mode_build() {
	need cpack cmake
	say "cpack ($SCRM_PKG_BUILD_DIR)"
	rm -rf "$SCRM_PKG_DIR"
	mkdir -p "$SCRM_PKG_DIR"
	cpack --config "$SCRM_PKG_BUILD_DIR/CPackConfig.cmake" -B "$SCRM_PKG_DIR" >"$SCRM_PKG_DIR/cpack.log" 2>&1 || {
		tail -n 40 "$SCRM_PKG_DIR/cpack.log"
		fail "cpack"
	}
	for f in "$AGENT_DEB" "$DEV_DEB" "$FLEET_DEB"; do
		[ -f "$f" ] || { ls -l "$SCRM_PKG_DIR"; fail "no $(basename "$f")"; }
		ok "$(basename "$f") ($(stat -c %s "$f") bytes)"
	done
	local n
	n=$(find "$SCRM_PKG_DIR" -maxdepth 1 -name '*.deb' | wc -l)
	[ "$n" -eq 3 ] || fail "expected 3 packages, cpack made $n"
}

# ============================================================================
# Library package of each NEEDED soname (Debian 12). A soname missing here fails
# the test: add its package to Depends in agent/dist/packaging.cmake, and here.
soname_package() {
	case "$1" in
	libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | ld-linux*.so.* | libresolv.so.2) echo libc6 ;;
	libsqlite3.so.0) echo libsqlite3-0 ;;
	libcjson.so.1) echo libcjson1 ;;
	libmbedcrypto.so.7) echo libmbedcrypto7 ;;
	libmbedtls.so.14) echo libmbedtls14 ;;
	libmbedx509.so.1) echo libmbedx509-1 ;;
	libpaho-mqtt3as.so.1) echo libpaho-mqtt1.3 ;;
	libssl.so.3 | libcrypto.so.3) echo libssl3 ;;
	libscrm.so.0) echo scrm-agent ;;   # shipped in the package itself
	*) echo "" ;;
	esac
}

check_control() {
	say "control fields"
	local f p
	for f in "$AGENT_DEB" "$DEV_DEB" "$FLEET_DEB"; do
		p=$(field "$f" Package)
		[ "$(field "$f" Architecture)" = "$ARCH" ] ||
			fail "$p: Architecture '$(field "$f" Architecture)', the target is $ARCH"
		[ "$(field "$f" Version)" = "$VER" ] || fail "$p: Version '$(field "$f" Version)', want $VER"
		for k in Maintainer Section Priority Homepage Description; do
			[ -n "$(field "$f" $k)" ] || fail "$p: no $k field"
		done
		ok "$p: Architecture $ARCH, Version $VER, Maintainer/Section/Priority/Homepage/Description set"
	done
	[ "$(field "$AGENT_DEB" Package)" = scrm-agent ] || fail "first package is not scrm-agent"
	[ "$(field "$DEV_DEB" Package)" = libscrm-dev ] || fail "second package is not libscrm-dev"
	[ "$(field "$FLEET_DEB" Package)" = scrm-fleet ] || fail "third package is not scrm-fleet"
	case ", $(field "$FLEET_DEB" Depends), " in *", scrm-agent"*) fail "scrm-fleet depends on scrm-agent (the operations side runs no agent)" ;; esac
	[ "$(field "$DEV_DEB" Depends)" = "scrm-agent (= $VER)" ] ||
		fail "libscrm-dev Depends '$(field "$DEV_DEB" Depends)', want 'scrm-agent (= $VER)'"
	ok "libscrm-dev Depends: scrm-agent (= $VER)"
	case ", $(field "$AGENT_DEB" Depends), " in *", adduser, "*) ;; *) fail "scrm-agent does not depend on adduser" ;; esac

	say "maintainer scripts, conffiles, triggers"
	local ctl=$W/control
	rm -rf "$ctl"
	dpkg-deb -e "$AGENT_DEB" "$ctl"
	for s in postinst prerm postrm; do
		[ -x "$ctl/$s" ] || fail "scrm-agent: no executable $s"
		sh -n "$ctl/$s" || fail "scrm-agent: $s is not valid sh"
	done
	[ "$(cat "$ctl/conffiles")" = "/etc/scrm/agent.json" ] ||
		fail "conffiles: '$(tr '\n' ' ' <"$ctl/conffiles")', want exactly /etc/scrm/agent.json"
	grep -qx 'activate-noawait ldconfig' "$ctl/triggers" || fail "no ldconfig trigger (libscrm.so.0 in /usr/$LIBDIR)"
	ok "postinst/prerm/postrm (sh), conffiles = /etc/scrm/agent.json, ldconfig trigger"
}

check_files() {
	say "file lists"
	local agent_list=$W/agent.files dev_list=$W/dev.files f
	dpkg-deb -c "$AGENT_DEB" | awk '{ print $6 }' | sed 's|^\./|/|' | sort >"$agent_list"
	dpkg-deb -c "$DEV_DEB" | awk '{ print $6 }' | sed 's|^\./|/|' | sort >"$dev_list"
	for f in /usr/bin/scrm-agent /usr/bin/scrmctl "/usr/$LIBDIR/libscrm.so.0" "/usr/$LIBDIR/libscrm.so.$VER" \
		/lib/systemd/system/scrm-agent.service /etc/scrm/agent.json \
		/usr/share/doc/scrm-agent/README.md /usr/share/doc/scrm-agent/copyright; do
		grep -qxF "$f" "$agent_list" || fail "scrm-agent lacks $f"
	done
	ok "scrm-agent: binaries, libscrm.so.0*, unit, /etc/scrm/agent.json, docs"
	for f in /usr/include/scrm/scrm.h "/usr/$LIBDIR/libscrm.so" "/usr/$LIBDIR/pkgconfig/scrm.pc" \
		/usr/share/doc/libscrm-dev/copyright; do
		grep -qxF "$f" "$dev_list" || fail "libscrm-dev lacks $f"
	done
	ok "libscrm-dev: scrm/scrm.h, libscrm.so, scrm.pc"
	# Nothing in both (dpkg would refuse the second), nothing of the dev package in the runtime one.
	local dup
	dup=$(comm -12 <(grep -v '/$' "$agent_list") <(grep -v '/$' "$dev_list") || true)
	[ -z "$dup" ] || fail "files in both packages: $dup"
	! grep -qE "^/usr/include/|/libscrm\.so$|\.pc$|\.a$" "$agent_list" || fail "scrm-agent ships development files"
	! grep -q "^/var/" "$agent_list" || fail "scrm-agent ships /var (the store is made by postinst and kept on purge)"
	ok "no file in both packages; no dev files or /var in scrm-agent"
	# The operations console is its own package: it signs commands to devices.
	local fleet_list=$W/fleet.files
	dpkg-deb -c "$FLEET_DEB" | awk '{ print $6 }' | sed 's|^\./|/|' | sort >"$fleet_list"
	for f in /usr/bin/scrm-fleet /usr/share/doc/scrm-fleet/copyright; do
		grep -qxF "$f" "$fleet_list" || fail "scrm-fleet lacks $f"
	done
	! grep -q 'scrm-fleet' "$agent_list" || fail "scrm-agent ships the fleet console: $(grep scrm-fleet "$agent_list" | tr '\n' ' ')"
	dup=$(comm -12 <(grep -v '/$' "$fleet_list") <(cat "$agent_list" "$dev_list" | grep -v '/$' | sort) || true)
	[ -z "$dup" ] || fail "files in scrm-fleet and another package: $dup"
	[ "$(grep -v '/$' "$fleet_list" | grep -vc '^/usr/share/doc/')" -eq 1 ] ||
		fail "scrm-fleet ships more than /usr/bin/scrm-fleet: $(grep -v '/$' "$fleet_list" | tr '\n' ' ')"
	ok "scrm-fleet: /usr/bin/scrm-fleet and its docs only; scrm-agent has no scrm-fleet"
}

# check_elf DEB MIN_ELF_FILES
check_elf() {
	local deb=$1 min=$2 p
	p=$(field "$deb" Package)
	say "$p: ELF files: target machine, stripped, NEEDED vs Depends"
	local x=$W/extract-$p machine f so pkg deps needed_pkgs=" "
	rm -rf "$x"
	dpkg-deb -x "$deb" "$x"
	case "$ARCH" in
	amd64) machine="Advanced Micro Devices X86-64" ;;
	arm64) machine="AArch64" ;;
	armhf | armel) machine="ARM" ;;
	i386) machine="Intel 80386" ;;
	*) fail "no ELF machine known for $ARCH" ;;
	esac
	deps=", $(field "$deb" Depends), "
	local n=0
	while IFS= read -r f; do
		readelf -h "$f" >/dev/null 2>&1 || continue
		n=$((n + 1))
		local m
		m=$(readelf -h "$f" | sed -n 's/^ *Machine: *//p')
		[ "$m" = "$machine" ] || fail "${f#"$x"}: ELF machine '$m', the package says $ARCH"
		if [ "$ARCH" = armhf ]; then
			readelf -h "$f" | grep -q "hard-float ABI" || fail "${f#"$x"}: not hard-float, but the package is armhf"
		fi
		! readelf -S "$f" | grep -q '\.symtab' || fail "${f#"$x"}: not stripped"
		for so in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
			pkg=$(soname_package "$so")
			[ -n "$pkg" ] || fail "${f#"$x"} needs $so: no package known for it (tests/package/deb_test.sh soname_package)"
			[ "$pkg" = scrm-agent ] && continue
			case "$deps" in *", $pkg "* | *", $pkg,"*) ;; *) fail "${f#"$x"} needs $so but Depends lacks $pkg" ;; esac
			case "$needed_pkgs" in *" $pkg "*) ;; *) needed_pkgs="$needed_pkgs$pkg " ;; esac
		done
	done < <(find "$x" -type f)
	[ "$n" -ge "$min" ] || fail "$p: found $n ELF files, expected $min"
	ok "$p: $n ELF files: $machine, stripped; NEEDED ->$needed_pkgs"
	# And the other way: every library in Depends is really linked.
	local d
	for d in $(field "$deb" Depends | tr ',' '\n' | sed 's/(.*)//; s/ //g'); do
		[ "$d" = adduser ] && continue
		case "$needed_pkgs" in *" $d "*) ;; *) fail "$p: Depends lists $d but no shipped ELF file needs it" ;; esac
	done
	ok "$p: every library in Depends is linked by a shipped file"
}

check_installed() {
	say "dpkg --root install: maintainer scripts in the root, not on the host"
	local host_before
	host_before=$(getent passwd scrm || true)
	install_debs
	[ "$(getent passwd scrm || true)" = "$host_before" ] || fail "postinst changed the HOST's user scrm (DPKG_ROOT ignored)"
	[ -n "$(passwd_field passwd scrm 1)" ] || fail "no user scrm in the root's /etc/passwd"
	[ -n "$(passwd_field group scrm 1)" ] || fail "no group scrm in the root's /etc/group"
	local uid gid
	uid=$(passwd_field passwd scrm 3)
	gid=$(passwd_field group scrm 3)
	[ "$(passwd_field passwd scrm 6)" = /var/lib/scrm ] || fail "scrm's home is '$(passwd_field passwd scrm 6)'"
	[ "$(passwd_field passwd scrm 7)" = /usr/sbin/nologin ] || fail "scrm's shell is '$(passwd_field passwd scrm 7)'"
	[ "$(passwd_field passwd scrm 4)" = "$gid" ] || fail "scrm's primary group is not scrm"
	[ "$uid" -lt 1000 ] || fail "scrm is not a system user (uid $uid)"
	ok "user scrm (uid $uid, group scrm $gid, home /var/lib/scrm, nologin) in the root only"
	local st
	st=$("${WRAP[@]}" stat -c '%a %u %g' "$ROOT/var/lib/scrm")
	[ "$st" = "2770 $uid $gid" ] || fail "/var/lib/scrm is '$st', want '2770 $uid $gid'"
	ok "/var/lib/scrm: scrm:scrm 2770"
	# (2700: the setgid bit comes from /var/lib/scrm; harmless, no group access)
	st=$("${WRAP[@]}" stat -c '%a %u %g' "$ROOT/var/lib/scrm/private")
	[ "${st#2}" = "700 $uid $gid" ] || fail "/var/lib/scrm/private is '$st', want '700 $uid $gid' (keys and cache: the agent's alone)"
	ok "/var/lib/scrm/private: scrm:scrm 0700"
	dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Conffiles}\n' scrm-agent | grep -q '^ /etc/scrm/agent.json [0-9a-f]\{32\}$' ||
		fail "dpkg did not register /etc/scrm/agent.json as a conffile"
	ok "conffile /etc/scrm/agent.json registered"
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		[ -f "$ROOT/var/lib/systemd/deb-systemd-helper-enabled/scrm-agent.service.dsh-also" ] ||
			fail "deb-systemd-helper state not recorded in the root"
		[ ! -e "$ROOT/etc/systemd/system/multi-user.target.wants/scrm-agent.service" ] ||
			fail "the unit was enabled on a first install (the config holds placeholders)"
		ok "unit registered with deb-systemd-helper, not enabled (placeholder config)"
	fi
}

check_run() {
	say "installed binaries${EMU[*]:+ (through ${EMU[*]})}"
	local out
	out=$(run_target "$ROOT/usr/bin/scrm-agent" --version) || fail "scrm-agent --version"
	case "$out" in "scrm-agent $VER "*) ;; *) fail "scrm-agent --version says '$out'" ;; esac
	ok "scrm-agent --version: $out"
	out=$(run_target "$ROOT/usr/bin/scrm-agent" --check-config --config "$ROOT/etc/scrm/agent.json" 2>&1) ||
		{ echo "$out"; fail "the shipped /etc/scrm/agent.json fails --check-config"; }
	grep -q ": ok$" <<<"$(head -n1 <<<"$out")" || { echo "$out"; fail "--check-config did not say ok"; }
	ok "scrm-agent --check-config accepts the shipped agent.json"
	# (Whole outputs first: grep -q quitting early would SIGPIPE the writer.)
	out=$(run_target "$ROOT/usr/bin/scrm-agent" --help-config) || fail "scrm-agent --help-config"
	grep -q '^tenant ' <<<"$out" || fail "scrm-agent --help-config lists no tenant key"
	out=$(run_target "$ROOT/usr/bin/scrmctl" --help) || fail "scrmctl --help"
	grep -q '^Usage: scrmctl' <<<"$out" || fail "scrmctl --help: $out"
	ok "scrm-agent --help-config, scrmctl --help"
	# scrmctl really works: one event into a fresh store, then the outbox status.
	local store=$W/ctl-store
	echo '{"kind":"member_scan","member_id":"17850","method":"card"}' |
		run_target "$ROOT/usr/bin/scrmctl" --store "$store" --device pos-01 record >/dev/null || fail "scrmctl record"
	out=$(run_target "$ROOT/usr/bin/scrmctl" --store "$store" status --json) || fail "scrmctl status"
	grep -q '"pending":1,' <<<"$out" || fail "scrmctl status after one record: $out"
	ok "scrmctl record + status: 1 event pending"

	say "the fleet console: scrm-fleet's package, not scrm-agent's"
	local rc=0
	out=$(env -u SCRM_FLEET_BIN PATH=/usr/bin:/bin "${EMU[@]}" "$ROOT/usr/bin/scrmctl" fleet list 2>&1) || rc=$?
	[ "$rc" -eq 2 ] || fail "scrmctl fleet without scrm-fleet: exit $rc, want 2: $out"
	grep -q 'scrm-fleet' <<<"$out" && grep -q 'operations side' <<<"$out" ||
		fail "scrmctl fleet without scrm-fleet does not say it is the scrm-fleet package: $out"
	ok "scrmctl fleet without scrm-fleet: exit 2, names the scrm-fleet package"
	rdpkg -i "$FLEET_DEB"
	[ "$(rstatus scrm-fleet)" = "ii " ] || fail "scrm-fleet not installed: status '$(rstatus scrm-fleet)'"
	out=$(run_target "$ROOT/usr/bin/scrm-fleet" --help) || fail "scrm-fleet --help"
	grep -q '^Usage: scrmctl fleet' <<<"$out" || fail "scrm-fleet --help: $out"
	if [ ${#EMU[@]} -gt 0 ]; then
		# scrmctl under qemu-user cannot exec another target binary (no
		# binfmt_misc here): the hand-over is checked on the native build.
		ok "scrm-fleet --help (scrmctl fleet's hand-over to it: native build only)"
	else
		out=$(env -u SCRM_FLEET_BIN "$ROOT/usr/bin/scrmctl" fleet --help) || fail "scrmctl fleet --help"
		grep -q '^Usage: scrmctl fleet' <<<"$out" || fail "scrmctl fleet --help (scrm-fleet next to it): $out"
		rc=0
		out=$(env -u SCRM_FLEET_BIN -u SCRM_FLEET_BROKER "$ROOT/usr/bin/scrmctl" fleet list 2>&1) || rc=$?
		[ "$rc" -eq 2 ] && grep -q -- '--broker: required' <<<"$out" || fail "scrmctl fleet list (no broker): exit $rc: $out"
		ok "scrm-fleet --help; scrmctl fleet runs the installed scrm-fleet next to it"
	fi
	rdpkg -r scrm-fleet
}

check_pkgconfig() {
	say "pkg-config scrm, and a program built against the installed files"
	need pkg-config pkg-config
	local pc=(env PKG_CONFIG_LIBDIR="$ROOT/usr/$LIBDIR/pkgconfig" PKG_CONFIG_PATH= PKG_CONFIG_SYSROOT_DIR="$ROOT"
		PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1 pkg-config)
	local v cflags libs
	v=$("${pc[@]}" --modversion scrm) || fail "pkg-config does not find scrm in the root"
	[ "$v" = "$VER" ] || fail "pkg-config --modversion scrm: $v"
	cflags=$("${pc[@]}" --cflags scrm | sed 's/ *$//')
	libs=$("${pc[@]}" --libs scrm | sed 's/ *$//')
	[ "$cflags" = "-I$ROOT/usr/include" ] || fail "pkg-config --cflags scrm: '$cflags'"
	[ "$libs" = "-L$ROOT/usr/$LIBDIR -lscrm" ] || fail "pkg-config --libs scrm: '$libs'"
	ok "pkg-config --modversion $v, --cflags --libs: $cflags $libs"

	: "${SCRM_PKG_CC:?}" "${SCRM_PKG_SMOKE_SRC:?}"
	local cc=("$SCRM_PKG_CC")
	if [ -n "${SCRM_PKG_SYSROOT:-}" ]; then
		# As the toolchain file does: the sysroot's C library and, for the
		# libraries libscrm.so needs, its library directories.
		local s=$SCRM_PKG_SYSROOT t=$SCRM_PKG_TRIPLET
		# shellcheck disable=SC2054  # -Wl,a,b is one word
		cc+=(--sysroot="$s" -B"$s/usr/lib/$t/" -B"$s/lib/$t/" -Wl,-rpath-link,"$s/usr/lib/$t:$s/lib/$t")
	fi
	# shellcheck disable=SC2086  # pkg-config output is a list of words
	"${cc[@]}" -std=c11 -Wall -Wextra -Werror -o "$W/pc_smoke" "$SCRM_PKG_SMOKE_SRC" $cflags $libs ||
		fail "compiling and linking against the installed header and libscrm.so"
	readelf -d "$W/pc_smoke" | grep -q 'NEEDED.*\[libscrm\.so\.0\]' || fail "pc_smoke does not link libscrm.so.0"
	local out
	out=$(LD_LIBRARY_PATH="$ROOT/usr/$LIBDIR" run_target "$W/pc_smoke" "$W/smoke-store") || fail "pc_smoke did not run: $out"
	[ "$out" = "libscrm $VER seq=1" ] || fail "pc_smoke printed '$out'"
	ok "cc pc_smoke.c \$(pkg-config --cflags --libs scrm): runs on the installed libscrm.so.0: $out"
}

check_lifecycle() {
	say "reinstall, remove, purge"
	local uid
	uid=$(passwd_field passwd scrm 3)
	sed -i 's/"example-device"/"pos-07"/' "$ROOT/etc/scrm/agent.json"
	echo "an unsent sale" >"$ROOT/var/lib/scrm/outbox.db"
	rdpkg -i "$AGENT_DEB"
	grep -q '"device_id": "pos-07"' "$ROOT/etc/scrm/agent.json" || fail "reinstall overwrote the edited conffile"
	[ "$("${WRAP[@]}" stat -c %a "$ROOT/var/lib/scrm")" = 2770 ] || fail "reinstall changed /var/lib/scrm's mode"
	[ "$(passwd_field passwd scrm 3)" = "$uid" ] || fail "reinstall changed the user"
	ok "reinstall (postinst configure <version>): edited conffile kept, store and user unchanged"

	rdpkg -r libscrm-dev scrm-agent
	[ "$(rstatus scrm-agent)" = "rc " ] || fail "after remove, scrm-agent is '$(rstatus scrm-agent)', want rc"
	[ ! -e "$ROOT/usr/bin/scrm-agent" ] || fail "remove left /usr/bin/scrm-agent"
	[ -f "$ROOT/etc/scrm/agent.json" ] || fail "remove deleted the conffile"
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		[ "$(readlink "$ROOT/etc/systemd/system/scrm-agent.service" || true)" = /dev/null ] ||
			fail "remove did not mask the unit (dh_installsystemd pattern)"
	fi
	ok "remove: programs gone, conffile kept"

	mkdir -p "$ROOT/var/log/scrm" && echo "ts=... msg=started" >"$ROOT/var/log/scrm/agent.log"
	rdpkg -P scrm-agent
	[ -z "$(rstatus scrm-agent)" ] || [ "$(rstatus scrm-agent)" = "un " ] ||
		fail "after purge, scrm-agent is '$(rstatus scrm-agent)'"
	[ ! -e "$ROOT/etc/scrm/agent.json" ] || fail "purge left /etc/scrm/agent.json"
	[ ! -e "$ROOT/var/log/scrm" ] || fail "purge left /var/log/scrm"
	[ "$(cat "$ROOT/var/lib/scrm/outbox.db" 2>/dev/null)" = "an unsent sale" ] ||
		fail "purge deleted the store: unsent sales lost"
	[ "$(passwd_field passwd scrm 3)" = "$uid" ] || fail "purge removed the user scrm (its files remain)"
	[ ! -e "$ROOT/etc/systemd/system/scrm-agent.service" ] || fail "purge left the unit masked"
	ok "purge: conffile and /var/log/scrm gone; /var/lib/scrm (unsent sales) and user scrm kept; unit unmasked"
}

mode_deb() {
	mkdir -p "$W"
	make_root
	check_control
	check_files
	check_elf "$AGENT_DEB" 3   # scrm-agent, scrmctl, libscrm.so.0
	check_elf "$FLEET_DEB" 1   # scrm-fleet
	check_installed
	check_run
	check_pkgconfig
	check_lifecycle
	echo
	echo "package_deb: all checks passed ($ARCH)"
}

# ============================================================================
mode_unit() {
	command -v systemd-analyze >/dev/null 2>&1 || { echo "SKIP: no systemd-analyze (apt-get install systemd)"; exit 77; }
	[ -d /lib/systemd/system ] || { echo "SKIP: no /lib/systemd/system to verify against"; exit 77; }
	install_debs
	local unit=$ROOT/lib/systemd/system/scrm-agent.service out rc=0 u

	say "unit settings agree with the daemon"
	local state
	state=$(sed -n 's/^StateDirectory=//p' "$unit")
	[ "$state" = scrm ] || fail "StateDirectory=$state"
	out=$(run_target "$ROOT/usr/bin/scrm-agent" --help-config) || fail "scrm-agent --help-config"
	grep -qE "^store_dir +string +/var/lib/$state " <<<"$out" ||
		fail "the daemon's default store_dir is not /var/lib/$state (StateDirectory=$state)"
	grep -q '"store_dir": "/var/lib/scrm"' "$ROOT/etc/scrm/agent.json" || fail "agent.json's store_dir is not /var/lib/$state"
	grep -qx 'ExecStart=/usr/bin/scrm-agent --config /etc/scrm/agent.json' "$unit" || fail "ExecStart"
	for u in Type=notify WatchdogSec=30 User=scrm Group=scrm LimitCORE=0; do
		grep -qx "$u" "$unit" || fail "the unit lacks $u"
	done
	ok "StateDirectory=$state = default store_dir /var/lib/$state; ExecStart, Type=notify, watchdog, User=scrm, LimitCORE=0"

	say "systemd-analyze verify (root: the installed package + this host's system units)"
	mkdir -p "$ROOT/bin"
	cp -L /bin/kill "$ROOT/bin/kill"   # ExecReload=/bin/kill
	for u in /lib/systemd/system/*; do
		[ -e "$ROOT/lib/systemd/system/${u##*/}" ] || [ -L "$ROOT/lib/systemd/system/${u##*/}" ] ||
			cp -a "$u" "$ROOT/lib/systemd/system/"
	done
	out=$(systemd-analyze verify --root="$ROOT" /lib/systemd/system/scrm-agent.service 2>&1) || rc=$?
	[ -z "$out" ] || printf '%s\n' "$out"
	[ "$rc" -eq 0 ] || fail "systemd-analyze verify: exit $rc"
	! grep -q 'scrm-agent' <<<"$out" || fail "systemd-analyze verify warns about scrm-agent.service"
	ok "systemd-analyze verify: no warnings"
	rc=0
	out=$(systemd-analyze security --offline=yes --root="$ROOT" --threshold=25 scrm-agent.service 2>&1) || rc=$?
	grep -E 'Overall exposure' <<<"$out" || true
	[ "$rc" -eq 0 ] || { grep '✗' <<<"$out" || true; fail "systemd-analyze security: exposure above 2.5"; }
	ok "systemd-analyze security: exposure <= 2.5"
}

mode_notify() {
	: "${SCRM_PKG_NOTIFY_LISTEN:?}"
	install_debs
	say "the installed daemon under a stand-in for systemd (Type=notify, WatchdogSec)"
	local store=$W/store sockdir
	mkdir -p "$store"
	echo "placeholder: the broker below refuses connections before TLS starts" >"$W/ca.pem"
	# The shipped config with the store and broker moved into the test: port 9
	# on loopback refuses at once, so the agent runs offline (as in a store
	# whose network is down), which is when READY must still come.
	sed -e "s|\"/var/lib/scrm\"|\"$store\"|" \
	    -e 's|mqtts://mqtt.example.invalid:8883|mqtts://127.0.0.1:9|' \
	    -e "s|\"/etc/scrm/ca.pem\"|\"$W/ca.pem\"|" "$ROOT/etc/scrm/agent.json" >"$W/agent.json"
	run_target "$ROOT/usr/bin/scrm-agent" --check-config --config "$W/agent.json" >/dev/null || fail "test config"
	sockdir=$(mktemp -d "${TMPDIR:-/tmp}/scrm-notify.XXXXXX")   # sun_path is 108 bytes
	local rc=0
	run_target "$SCRM_PKG_NOTIFY_LISTEN" "$sockdir/notify" --ready-ms 30000 --watchdog-ms 4000 -- \
		"${EMU[@]}" "$ROOT/usr/bin/scrm-agent" --config "$W/agent.json" 2>"$W/agent.log" || rc=$?
	rm -rf "$sockdir"
	if [ "$rc" -ne 0 ]; then
		echo "--- daemon log (tail) ---"
		tail -n 30 "$W/agent.log"
		fail "the installed scrm-agent does not speak the systemd notify protocol (see above)"
	fi
	ok "READY=1, WATCHDOG=1, RELOADING=1/READY=1 on SIGHUP, STOPPING=1 and exit 0 on SIGTERM"
}

case "$MODE" in
build) mode_build ;;
deb) mode_deb ;;
unit) mode_unit ;;
notify) mode_notify ;;
*) echo "usage: deb_test.sh build|deb|unit|notify" >&2; exit 2 ;;
esac
