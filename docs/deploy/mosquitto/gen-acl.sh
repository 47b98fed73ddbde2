#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# gen-acl.sh: the broker's ACL file from central's device registry.
#
#   gen-acl.sh [--central CN]... [--ops TENANT:CN]... DEVICES.csv [ACL_FILE]
#
# DEVICES.csv has one device per line, "tenant,store,device" (a header line
# with those words, blank lines and lines starting with # are skipped).
# Tenant, store and device ids follow the agent's rule (agent/lib/core/ident.c):
# 1..64 of [A-Za-z0-9_.-] and not "up" or "down", the words of the topic
# tree (a device "down" would be under scrm/v1/T/S/down/#, which every
# device of store S reads). Each
# device's certificate CN is its device id, which the broker also uses as
# its user name and client id (mosquitto.conf): device ids must therefore be
# unique across everything this broker serves — the script refuses a
# registry where they are not (run one broker per tenant if tenants cannot
# guarantee that).
#
# Rights (docs/protocol.md, "Device identity and broker ACL"):
#   device D of tenant T, store S   write scrm/v1/T/S/D/up/#
#                                   read  scrm/v1/T/S/D/down/#, scrm/v1/T/S/down/#
#   --central CN (default central)  readwrite scrm/v1/#   (one CN per consumer
#                                   instance: the CN is also the client id)
#   --ops TENANT:CN                 read up/state, up/health, up/reply/# and
#                                   write down/cmd of every device of TENANT
#                                   only (none by default): a console
#                                   identity serves one tenant; one operator
#                                   of two tenants holds two certificates
#
# Writes ACL_FILE atomically (temp file + rename; then reload mosquitto), or
# standard output. Exit status: 0 written, 1 bad registry line (each one
# reported as FILE:LINE: reason), 2 usage.
set -eu

usage() {
	echo "usage: gen-acl.sh [--central CN]... [--ops TENANT:CN]... DEVICES.csv [ACL_FILE]" >&2
	exit 2
}

central=""
ops=""
while [ $# -gt 0 ]; do
	case "$1" in
	--central) [ $# -ge 2 ] || usage; central="$central $2"; shift 2 ;;
	--ops) [ $# -ge 2 ] || usage; ops="$ops $2"; shift 2 ;;
	--help|-h) sed -n '3,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	--) shift; break ;;
	-*) usage ;;
	*) break ;;
	esac
done
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
csv=$1
out=${2:-}
[ -r "$csv" ] || { echo "gen-acl.sh: $csv: cannot read" >&2; exit 1; }
[ -n "$central" ] || central=" central"

generate() {
	awk -F, -v central="$central" -v ops="$ops" -v src="$csv" '
	function bad(msg) { printf "gen-acl.sh: %s:%d: %s\n", src, NR, msg > "/dev/stderr"; err = 1 }
	function valid(x) { return x ~ /^[A-Za-z0-9_.-]+$/ && length(x) <= 64 }
	# The id rule of agent/lib/core/ident.c: why x is not an id, or "".
	function problem(x) {
		if (!valid(x)) return "must be 1..64 of [A-Za-z0-9_.-]"
		if (x == "up" || x == "down") return "\"" x "\" is reserved: a word of the topic tree, not an id"
		return ""
	}
	BEGIN {
		nc = split(central, C, " "); no = split(ops, O, " ")
		for (i = 1; i <= nc; i++) {
			if (!valid(C[i])) { printf "gen-acl.sh: --central %s: must be 1..64 of [A-Za-z0-9_.-]\n", C[i] > "/dev/stderr"; err = 1 }
			who[C[i]] = "--central"
		}
		for (i = 1; i <= no; i++) {
			# TENANT:CN, the console identity CN confined to TENANT
			c = index(O[i], ":")
			OT[i] = c ? substr(O[i], 1, c - 1) : ""; O[i] = c ? substr(O[i], c + 1) : O[i]
			if (!c) { printf "gen-acl.sh: --ops %s: expected TENANT:CN (a console identity serves one tenant)\n", O[i] > "/dev/stderr"; err = 1; continue }
			if ((why = problem(OT[i])) != "") { printf "gen-acl.sh: --ops %s:%s: tenant: %s\n", OT[i], O[i], why > "/dev/stderr"; err = 1 }
			if (!valid(O[i])) { printf "gen-acl.sh: --ops %s:%s: CN: must be 1..64 of [A-Za-z0-9_.-]\n", OT[i], O[i] > "/dev/stderr"; err = 1 }
			if (O[i] in who) { printf "gen-acl.sh: %s: named twice\n", O[i] > "/dev/stderr"; err = 1 }
			who[O[i]] = "--ops"
		}
		n = 0; seen_data = 0
	}
	{ sub(/\r$/, "") }
	/^[ \t]*(#|$)/ { next }
	{
		if (NF != 3) { bad("expected tenant,store,device, got " NF " field(s)"); next }
		for (i = 1; i <= 3; i++) { gsub(/^[ \t]+|[ \t]+$/, "", $i) }
		if (!seen_data++ && $1 == "tenant" && $2 == "store" && $3 == "device") next
		if ((why = problem($1)) != "") { bad("tenant \"" $1 "\": " why); next }
		if ((why = problem($2)) != "") { bad("store \"" $2 "\": " why); next }
		if ((why = problem($3)) != "") { bad("device \"" $3 "\": " why); next }
		if ($3 in who) { bad("device \"" $3 "\": also " who[$3] " (a certificate CN names one identity)"); next }
		if ($3 in line) { bad("device \"" $3 "\": already on line " line[$3] " (the CN is the broker-wide identity)"); next }
		line[$3] = NR; n++; T[n] = $1; S[n] = $2; D[n] = $3
	}
	END {
		if (err) exit 1
		print "# mosquitto acl_file for SCRM, written by gen-acl.sh from " src "."
		print "# Do not edit: regenerate from the device registry, then reload mosquitto."
		print "# User names are certificate CNs (use_identity_as_username)."
		print ""
		for (i = 1; i <= nc; i++) {
			print "# central consumer"
			print "user " C[i]
			print "topic readwrite scrm/v1/#"
			print ""
		}
		for (i = 1; i <= no; i++) {
			print "# operations console of tenant " OT[i] ": presence, health, commands and their replies"
			print "user " O[i]
			print "topic read scrm/v1/" OT[i] "/+/+/up/state"
			print "topic read scrm/v1/" OT[i] "/+/+/up/health"
			print "topic read scrm/v1/" OT[i] "/+/+/up/reply/#"
			print "topic write scrm/v1/" OT[i] "/+/+/down/cmd"
			print ""
		}
		for (i = 1; i <= n; i++) {
			print "# device " D[i] " of tenant " T[i] ", store " S[i]
			print "user " D[i]
			print "topic write scrm/v1/" T[i] "/" S[i] "/" D[i] "/up/#"
			print "topic read scrm/v1/" T[i] "/" S[i] "/" D[i] "/down/#"
			print "topic read scrm/v1/" T[i] "/" S[i] "/down/#"
			print ""
		}
		printf "gen-acl.sh: %d device(s), %d central, %d console identities\n", n, nc, no > "/dev/stderr"
	}' "$csv"
}

if [ -z "$out" ]; then
	generate
else
	tmp="$out.tmp.$$"
	trap 'rm -f "$tmp"' EXIT
	generate > "$tmp"
	chmod 0644 "$tmp"
	mv -f "$tmp" "$out"
	trap - EXIT
fi
