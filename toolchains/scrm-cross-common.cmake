# toolchains/scrm-cross-common.cmake — shared body of the cross toolchain files
# (aarch64-linux-gnu.cmake, arm-linux-gnueabihf.cmake). Not a toolchain file by itself.
#
# Owns: the cross settings for a Debian 12 host building against a PRIVATE sysroot made by
# cross/setup-sysroot.sh (default <repo>/build/sysroot-<debarch>): compiler, sysroot, find
# modes, pkg-config environment, and qemu as CMAKE_CROSSCOMPILING_EMULATOR (ctest runs the
# test binaries through it).
#
# The including file sets: SCRM_CROSS_TRIPLET, SCRM_CROSS_PROCESSOR, SCRM_CROSS_DEBARCH,
# SCRM_CROSS_QEMU.
#
# Sysroot: -DSCRM_SYSROOT=/abs/path, else env SCRM_SYSROOT, else the default above.

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR ${SCRM_CROSS_PROCESSOR})
set(CMAKE_LIBRARY_ARCHITECTURE ${SCRM_CROSS_TRIPLET})

set(CMAKE_C_COMPILER ${SCRM_CROSS_TRIPLET}-gcc)
set(CMAKE_CXX_COMPILER ${SCRM_CROSS_TRIPLET}-g++)   # only used if a project enables CXX

# ---- sysroot ----
# try_compile() projects re-read this file without the main cache: they get the value
# through CMAKE_TRY_COMPILE_PLATFORM_VARIABLES and the environment set below.
if(NOT SCRM_SYSROOT)
  if(NOT "$ENV{SCRM_SYSROOT}" STREQUAL "")
    set(_scrm_sysroot "$ENV{SCRM_SYSROOT}")
  else()
    get_filename_component(_scrm_repo "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
    set(_scrm_sysroot "${_scrm_repo}/build/sysroot-${SCRM_CROSS_DEBARCH}")
  endif()
  set(SCRM_SYSROOT "${_scrm_sysroot}" CACHE PATH
      "Target sysroot (made by cross/setup-sysroot.sh ${SCRM_CROSS_DEBARCH} DIR)")
endif()
get_filename_component(SCRM_SYSROOT "${SCRM_SYSROOT}" ABSOLUTE)
if(NOT EXISTS "${SCRM_SYSROOT}/usr/lib/${SCRM_CROSS_TRIPLET}/libc.so")
  message(FATAL_ERROR
    "No ${SCRM_CROSS_DEBARCH} sysroot at ${SCRM_SYSROOT}.\n"
    "Make it with:  cross/setup-sysroot.sh ${SCRM_CROSS_DEBARCH} ${SCRM_SYSROOT}\n"
    "or point -DSCRM_SYSROOT=<dir> (or env SCRM_SYSROOT) at one.")
endif()
set(ENV{SCRM_SYSROOT} "${SCRM_SYSROOT}")
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES SCRM_SYSROOT)

set(CMAKE_SYSROOT "${SCRM_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH "${SCRM_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)    # build tools come from the host
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)     # libraries, headers, CMake packages:
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)     #   from the sysroot only
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Link against the sysroot's C library (crt*.o, libc.so) even when the host also has
# Debian's libc6-dev-<arch>-cross, whose /usr/<triplet>/lib gcc would otherwise search
# first. (Headers: gcc still searches /usr/<triplet>/include first if that package is
# installed; it is the same glibc 2.36.)
set(_scrm_B "-B${SCRM_SYSROOT}/usr/lib/${SCRM_CROSS_TRIPLET}/ -B${SCRM_SYSROOT}/lib/${SCRM_CROSS_TRIPLET}/")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${_scrm_B}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "${_scrm_B}")
set(CMAKE_MODULE_LINKER_FLAGS_INIT "${_scrm_B}")

# ---- pkg-config: the target's .pc files only, paths prefixed with the sysroot ----
set(ENV{PKG_CONFIG_LIBDIR}
    "${SCRM_SYSROOT}/usr/lib/${SCRM_CROSS_TRIPLET}/pkgconfig:${SCRM_SYSROOT}/usr/lib/pkgconfig:${SCRM_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${SCRM_SYSROOT}")
unset(ENV{PKG_CONFIG_PATH})   # a user's PKG_CONFIG_PATH would add host .pc files

# ---- run target binaries (ctest, add_custom_command on targets) under qemu ----
find_program(SCRM_QEMU_${SCRM_CROSS_DEBARCH} NAMES ${SCRM_CROSS_QEMU}
             NO_CMAKE_FIND_ROOT_PATH DOC "qemu-user binary for ${SCRM_CROSS_DEBARCH}")
if(NOT SCRM_QEMU_${SCRM_CROSS_DEBARCH})
  message(FATAL_ERROR "${SCRM_CROSS_QEMU} not found: apt-get install qemu-user "
                      "(cross/setup-sysroot.sh ${SCRM_CROSS_DEBARCH} installs it)")
endif()
set(CMAKE_CROSSCOMPILING_EMULATOR "${SCRM_QEMU_${SCRM_CROSS_DEBARCH}};-L;${SCRM_SYSROOT}")
