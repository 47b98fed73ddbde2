# toolchains/arm-linux-gnueabihf.cmake — CMake toolchain file: Debian 12 host -> armhf
# (32-bit ARMv7-A, hard float; NOTE: 32-bit time_t in Debian 12 armhf).
# Owns: nothing but these four values; the body is scrm-cross-common.cmake.
# Needs the sysroot from `cross/setup-sysroot.sh armhf` (default <repo>/build/sysroot-armhf;
# override with -DSCRM_SYSROOT=/abs/dir or env SCRM_SYSROOT).
#
#   cross/setup-sysroot.sh armhf
#   cmake -S . -B build-armhf -DCMAKE_TOOLCHAIN_FILE=toolchains/arm-linux-gnueabihf.cmake
#   cmake --build build-armhf && ctest --test-dir build-armhf    # tests run under qemu-arm
set(SCRM_CROSS_TRIPLET arm-linux-gnueabihf)
set(SCRM_CROSS_PROCESSOR armv7l)
set(SCRM_CROSS_DEBARCH armhf)
set(SCRM_CROSS_QEMU qemu-arm)
include("${CMAKE_CURRENT_LIST_DIR}/scrm-cross-common.cmake")
