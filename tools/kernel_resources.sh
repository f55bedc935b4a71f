#!/usr/bin/env bash
# Registers, spills and static shared memory of every CUDA kernel, as ptxas reports them for
# one architecture (sm_90a by default: H100/H200) — what can be known of a kernel's
# occupancy without a GPU. It reruns Bazel's own nvcc command for each .cu file of
# //stability/ops/cuda:cuda_backend with --resource-usage and prints one row a kernel:
#
#   bash tools/kernel_resources.sh            # sm_90a
#   bash tools/kernel_resources.sh sm_80      # A100
#
# A kernel that spills (stores/loads > 0) keeps part of its per-thread arrays in local
# memory; dynamic shared memory (the tensor-core attention's) is set at launch and not shown.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
arch="${1:-sm_90a}"
STABILITY_SETUP_QUIET=1 bash tools/setup.sh >/dev/null
bazel build //stability/ops/cuda:cuda_backend >/dev/null 2>&1
exec_root="$(bazel info execution_root 2>/dev/null)"
bazel aquery 'mnemonic("NvccCompile", //stability/ops/cuda:cuda_backend)' --output=jsonproto 2>/dev/null |
  ARCH="$arch" EXEC_ROOT="$exec_root" python3 -c '
import json, os, re, subprocess, sys
arch, root = os.environ["ARCH"], os.environ["EXEC_ROOT"]
print(f"| file | kernel | registers | stack | spill stores/loads | static shared |")
print("|---|---|---|---|---|---|")
for action in json.load(sys.stdin)["actions"]:
    args = [a for a in action["arguments"] if not a.startswith("-gencode")]
    src = args[-1]
    args[args.index("-o") + 1] = "/dev/null"
    virtual = arch.replace("sm_", "compute_")
    args += [f"-gencode=arch={virtual},code={arch}", "--resource-usage"]
    out = subprocess.run(args, cwd=root, capture_output=True, text=True)
    text = subprocess.run(["c++filt"], input=out.stderr, capture_output=True, text=True).stdout
    name = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function .(.*). for", line)
        if m:
            name = re.sub(r"^void |\(anonymous namespace\)::|stability::ops::cuda::internal::", "", m.group(1))
            name, stack, spill = re.sub(r"\(.*", "", name), "", ""
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            stack, spill = m.group(1), f"{m.group(2)}/{m.group(3)}"
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            smem = re.search(r"(\d+) bytes smem", line)
            print(f"| {os.path.basename(src)} | `{name}` | {m.group(1)} | {stack} | {spill} | {smem.group(1) if smem else 0} |")
            name = None
'
