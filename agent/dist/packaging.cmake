# SPDX-License-Identifier: Apache-2.0
# agent/dist/packaging.cmake — how SCRM is installed on a store device: the
# operating files (systemd unit, sample config, pkg-config file, package docs)
# and the Debian packages CPack makes from them and from the agent's targets:
#
#   scrm-agent   scrm-agent, scrmctl, libscrm.so.0*, the unit, /etc/scrm/agent.json
#                (a conffile), maintainer scripts (user scrm, /var/lib/scrm), docs
#   libscrm-dev  scrm/scrm.h, libscrm.so, scrm.pc; Depends: scrm-agent (= version)
#   scrm-fleet   scrm-fleet, the operations console (central side: it signs
#                commands to devices, so store devices do not carry it; on a
#                device `scrmctl fleet` says where it is)
#
#   cmake --build <dir> --target package       ->  <dir>/scrm-agent_0.1.0_arm64.deb ...
#   cpack --config <dir>/CPackConfig.cmake -B <out>
#
# Included from the top CMakeLists.txt BEFORE add_subdirectory(agent): it makes
# scrm-agent the default install component, so the agent's install() rules (and
# any added later without COMPONENT) land in that package.
#
# The package architecture is the TARGET's (CMAKE_SYSTEM_PROCESSOR, set by the
# toolchain file when cross-compiling), never `dpkg --print-architecture`.
# Depends are written out, not computed: dpkg-shlibdeps cannot read a cross
# target's binaries without that architecture's dpkg database. They are what
# dpkg-shlibdeps says for the amd64 build (Debian 12), and the package test
# (tests/package) checks every NEEDED soname of every shipped ELF file against
# them on each architecture.

set(SCRM_DIST_DIR ${CMAKE_CURRENT_LIST_DIR})
set(SCRM_HOMEPAGE "https://scrm.example.invalid/edge-agent" CACHE STRING
    "Homepage in the Debian packages and scrm.pc (placeholder until there is one)")
set(SCRM_DEB_MAINTAINER "SCRM edge team <scrm-edge@example.invalid>" CACHE STRING
    "Maintainer field of the Debian packages")
set(CMAKE_INSTALL_DEFAULT_COMPONENT_NAME scrm-agent)

# ---- Debian architecture of the target ----
string(TOLOWER "${CMAKE_SYSTEM_PROCESSOR}" _scrm_proc)
if(_scrm_proc MATCHES "^(x86_64|amd64)$")
  set(_scrm_debarch amd64)
elseif(_scrm_proc MATCHES "^(aarch64|arm64)")
  set(_scrm_debarch arm64)
elseif(_scrm_proc MATCHES "^arm")
  # Debian's 32-bit ARM ports: armhf (hard float, what the tablets run) or
  # armel; the triplet tells them apart.
  if(CMAKE_LIBRARY_ARCHITECTURE MATCHES "gnueabi$")
    set(_scrm_debarch armel)
  else()
    set(_scrm_debarch armhf)
  endif()
elseif(_scrm_proc MATCHES "^i[3-6]86$")
  set(_scrm_debarch i386)
else()
  set(_scrm_debarch "")
endif()
set(SCRM_DEB_ARCH "${_scrm_debarch}" CACHE STRING
    "Debian architecture of the packages (default: from CMAKE_SYSTEM_PROCESSOR)")

# ---- operating files ----
install(FILES ${SCRM_DIST_DIR}/scrm-agent.service
        DESTINATION /lib/systemd/system PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
        COMPONENT scrm-agent)
install(FILES ${SCRM_DIST_DIR}/agent.json
        DESTINATION /etc/scrm PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
        COMPONENT scrm-agent)
install(FILES ${SCRM_DIST_DIR}/README.md ${SCRM_DIST_DIR}/copyright
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/scrm-agent COMPONENT scrm-agent)
install(FILES ${SCRM_DIST_DIR}/copyright
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/libscrm-dev COMPONENT libscrm-dev)
install(FILES ${SCRM_DIST_DIR}/copyright
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/scrm-fleet COMPONENT scrm-fleet)

# scrm.pc: the version now, the prefix at install time (/usr in the package,
# CMAKE_INSTALL_PREFIX for `cmake --install`).
set(SCRM_PC_PREFIX "@SCRM_PC_PREFIX@")
configure_file(${SCRM_DIST_DIR}/scrm.pc.in ${PROJECT_BINARY_DIR}/dist/scrm.pc.in @ONLY)
install(CODE "set(SCRM_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  configure_file(\"${PROJECT_BINARY_DIR}/dist/scrm.pc.in\" \"${PROJECT_BINARY_DIR}/dist/scrm.pc\" @ONLY)"
  COMPONENT libscrm-dev)
install(FILES ${PROJECT_BINARY_DIR}/dist/scrm.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT libscrm-dev)

# ---- CPack: one .deb per component ----
if(NOT SCRM_DEB_ARCH)
  # No guessing: CPack would fall back to the BUILD machine's dpkg architecture.
  message(WARNING "No Debian architecture for CMAKE_SYSTEM_PROCESSOR '${CMAKE_SYSTEM_PROCESSOR}': "
                  "no 'package' target; set -DSCRM_DEB_ARCH=... to build packages")
  return()
endif()
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME scrm)
set(CPACK_PACKAGE_VENDOR "SCRM")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${SCRM_DEB_MAINTAINER}")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL scrm-agent libscrm-dev scrm-fleet)
set(CPACK_COMPONENTS_GROUPING IGNORE)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)              # name_version_arch.deb
set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE ${SCRM_DEB_ARCH})
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${SCRM_DEB_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "${SCRM_HOMEPAGE}")
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS OFF)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)

set(CPACK_DEBIAN_SCRM-AGENT_PACKAGE_NAME scrm-agent)
set(CPACK_DEBIAN_SCRM-AGENT_PACKAGE_SECTION net)
# libssl3: the daemon's TLS diagnosis (tlsprobe) quotes OpenSSL's verify
# result for a rejected broker chain, so scrm-agent links libcrypto itself
# (Paho's TLS needs the same package anyway).
set(CPACK_DEBIAN_SCRM-AGENT_PACKAGE_DEPENDS
    "adduser, libc6 (>= 2.34), libcjson1 (>= 1.7.13), libmbedcrypto7 (>= 2.28.0), libmbedtls14 (>= 2.28.0), libmbedx509-1 (>= 2.28.0), libpaho-mqtt1.3 (>= 1.3.0), libsqlite3-0 (>= 3.20.0), libssl3 (>= 3.0.0)")
set(CPACK_DEBIAN_SCRM-AGENT_PACKAGE_CONTROL_EXTRA
    ${SCRM_DIST_DIR}/debian/postinst ${SCRM_DIST_DIR}/debian/prerm ${SCRM_DIST_DIR}/debian/postrm
    ${SCRM_DIST_DIR}/debian/conffiles ${SCRM_DIST_DIR}/debian/triggers)
set(CPACK_COMPONENT_SCRM-AGENT_DESCRIPTION
"SCRM edge agent: store outbox to central, offline customer cache
scrm-agent runs on every POS box and guide tablet of a store. Sales, returns
and member scans recorded by the POS software through libscrm are committed
to a local SQLite outbox first; the agent ships them to the central SCRM over
MQTT 5 + TLS and deletes each only when central has acknowledged it. It also
keeps an offline copy of members, coupons and product rules, with personal
data encrypted at rest. Includes scrmctl (record, status, member look-up,
recommendations, coupons) and the shared library libscrm.")

set(CPACK_DEBIAN_LIBSCRM-DEV_PACKAGE_NAME libscrm-dev)
set(CPACK_DEBIAN_LIBSCRM-DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_LIBSCRM-DEV_PACKAGE_DEPENDS "scrm-agent (= ${PROJECT_VERSION})")
set(CPACK_COMPONENT_LIBSCRM-DEV_DESCRIPTION
"SCRM capture API: development files
The header scrm/scrm.h, the libscrm.so link and the pkg-config file scrm.pc,
for POS and guide-tablet software that records sales, returns and member
scans into the store's outbox and reads the offline customer cache.")

set(CPACK_DEBIAN_SCRM-FLEET_PACKAGE_NAME scrm-fleet)
set(CPACK_DEBIAN_SCRM-FLEET_PACKAGE_SECTION admin)
# What scrm-fleet links (no SQLite: it reads no store): Paho and OpenSSL
# (the transport), mbedTLS's crypto (command signatures), cJSON. No
# scrm-agent: the operations side runs no agent.
set(CPACK_DEBIAN_SCRM-FLEET_PACKAGE_DEPENDS
    "libc6 (>= 2.34), libcjson1 (>= 1.7.13), libmbedcrypto7 (>= 2.28.0), libpaho-mqtt1.3 (>= 1.3.0), libssl3 (>= 3.0.0)")
set(CPACK_COMPONENT_SCRM-FLEET_DESCRIPTION
"SCRM fleet console: the central operations view of every store agent
scrm-fleet connects to the fleet's MQTT broker as an operator and lists every
agent of a tenant (online or not, last heartbeat, backlog, version), shows one
agent's health in detail, and sends it commands (ping, status, resync, flush,
config.get/set, log.level, member.forget, cache.purge, ...), signed with the
operator's key, printing the reply. For the operations side only: store
devices run scrm-agent, which does not include it.")

include(CPack)
