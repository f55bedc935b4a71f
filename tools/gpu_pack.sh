#!/usr/bin/env bash
# Packs the GPU check for a lent GPU machine, which has CUDA, cuBLAS, NCCL and Python but no
# Bazel and none of our other libraries. Run here (where the tree builds):
#
#   bash tools/gpu_pack.sh
#
# It builds the CUDA tests and the CLI (nvcc: sm_80, sm_90a + PTX), copies them with the
# shared libraries they load that the GPU image lacks (absl, oneDNN, ICU, Open MPI, ...; not
# the CUDA driver, cuBLAS or NCCL, which the image has) into .gpu/bundle.tar.xz (ignored by
# git, well under the device tool's 64 MiB), then the device tool runs, in one call:
#
#   run(carry=[".gpu"], command="bash tools/gpu_check.sh", timeout_s=540)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
targets=(
  //stability/ops/cuda:device_query_test
  //stability/ops/cuda:warp_mma_test
  //stability/ops/cuda:cuda_backend_test
  //tests/cuda:model_cuda_test
  //stability/dist:nccl_communicator_test
  //stability/ops/cuda:benchmarks
  //cli:stability
)
bazel build "${targets[@]}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
for t in "${targets[@]}"; do
  path="bazel-bin/$(echo "${t#//}" | tr ':' '/')"
  cp "$path" "$stage/bin/"
done
# Every library the binaries load, minus what the GPU image provides itself.
for b in "$stage"/bin/*; do ldd "$b"; done | awk '/=> \//{print $3}' | sort -u |
  grep -v -E '/(libc|libm|libdl|librt|libpthread|ld-linux-x86-64|libcuda|libcublas|libcublasLt|libnccl|libstdc\+\+|libgcc_s)\.so' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done
# This machine's C and C++ runtime, for an image whose glibc is older than the binaries need
# (GLIBC_2.34 here, 2.36 for Open MPI's libevent): gpu_check.sh then runs every binary with
# this loader instead of the image's.
mkdir -p "$stage/lib/fallback"
for lib in /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/{libc.so.6,libm.so.6,libdl.so.2,librt.so.1,libpthread.so.0,libstdc++.so.6,libgcc_s.so.1}; do
  cp -L "$lib" "$stage/lib/fallback/"
done
git rev-parse --short HEAD > "$stage/commit"
mkdir -p .gpu
tar -C "$stage" -cJf .gpu/bundle.tar.xz .
echo "wrote .gpu/bundle.tar.xz ($(du -h .gpu/bundle.tar.xz | cut -f1), $(ls "$stage/bin" | wc -l) binaries, $(ls "$stage/lib" | wc -l) libraries) for commit $(cat "$stage/commit")"
