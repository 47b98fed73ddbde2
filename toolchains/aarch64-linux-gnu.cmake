# toolchains/aarch64-linux-gnu.cmake — CMake toolchain file: Debian 12 host -> arm64 (aarch64).
# Owns: nothing but these four values; the body is scrm-cross-common.cmake.
# Needs the sysroot from `cross/setup-sysroot.sh arm64` (default <repo>/build/sysroot-arm64;
# override with -DSCRM_SYSROOT=/abs/dir or env SCRM_SYSROOT).
#
#   cross/setup-sysroot.sh arm64
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=toolchains/aarch64-linux-gnu.cmake
#   cmake --build build-arm64 && ctest --test-dir build-arm64    # tests run under qemu-aarch64
set(SCRM_CROSS_TRIPLET aarch64-linux-gnu)
set(SCRM_CROSS_PROCESSOR aarch64)
set(SCRM_CROSS_DEBARCH arm64)
set(SCRM_CROSS_QEMU qemu-aarch64)
include("${CMAKE_CURRENT_LIST_DIR}/scrm-cross-common.cmake")
