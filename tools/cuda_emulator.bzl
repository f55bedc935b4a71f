"""cuda_emulated_library: a cuda_library's .cu files built for the CUDA emulator.

    cuda_emulated_library(
        name = "cuda_backend_emulated",
        srcs = ["norm.cu", ...],            # .cu files, rewritten to host C++; .cc files as they are
        hdrs = ["cuda_backend.h"],
        private_hdrs = ["internal/common.cuh"],
        deps = [...],
    )

Each .cu file is rewritten by stability/ops/cuda/emulator/to_host_cpp.py (launches and
dynamic shared memory as host C++) and compiled by the C++ toolchain with
stability/ops/cuda/emulator/cuda_emulator.h included first; the result links against the
emulator (//stability/ops/cuda/emulator) instead of the CUDA runtime, so its kernels run on
the CPU (cuda_emulator.h says how, and what that proves). Test-only. Needs the CUDA
toolkit's headers; without a toolkit the targets are not defined.
"""

load("@local_cuda//:defs.bzl", "CUDA_AVAILABLE")

_INSTRUMENT_RUNTIMES = {
    "racecheck": "//stability/ops/cuda/emulator:racecheck",
    "traffic": "//stability/ops/cuda/emulator:traffic",
}

def cuda_emulated_library(name, srcs, hdrs = [], private_hdrs = [], deps = [], instrument = None, **kwargs):
    """A cc_library of `srcs` (.cu rewritten for the emulator) linked against the emulator.

    instrument: the sources compiled with GCC's ThreadSanitizer instrumentation (no TSan
    runtime: the emulator's answers its calls), every load and store going to
      "racecheck": the race checker: a data race between a kernel's threads aborts with both
        accesses named (emulator/racecheck.cc says what counts);
      "traffic": the traffic counter: each launch's device-memory traffic (emulator/traffic.h).
    """
    if instrument != None and instrument not in _INSTRUMENT_RUNTIMES:
        fail("instrument must be one of {}, not {}".format(_INSTRUMENT_RUNTIMES.keys(), instrument))
    if not CUDA_AVAILABLE:
        return
    cc_srcs = []
    rewritten_hdrs = []

    # Each .cu as _<name>/<file>.cc; each private header as _<name>/<package>/<header>, which
    # is where a rewritten .cc's #include "<package>/<header>" finds it first (a quoted
    # include searches the including file's directory before the include path).
    for src in srcs + private_hdrs:
        if src.endswith(".cu"):
            out = "_{}/{}.cc".format(name, src[:-len(".cu")])
        elif src in private_hdrs:
            out = "_{}/{}/{}".format(name, native.package_name(), src)
        else:
            cc_srcs.append(src)
            continue
        native.genrule(
            name = "{}_{}".format(name, src.replace("/", "_").replace(".", "_")),
            srcs = [src],
            outs = [out],
            cmd = "python3 $(location //stability/ops/cuda/emulator:to_host_cpp.py) $< $@",
            tools = ["//stability/ops/cuda/emulator:to_host_cpp.py"],
            testonly = True,
        )
        if src in private_hdrs:
            rewritten_hdrs.append(out)
        else:
            cc_srcs.append(out)
    native.cc_library(
        name = name,
        srcs = cc_srcs,
        hdrs = hdrs,
        textual_hdrs = private_hdrs + rewritten_hdrs,  # .cuh: not a header extension cc_library knows
        copts = [
            "-include",
            "stability/ops/cuda/emulator/cuda_emulator.h",
            "-Wno-unknown-pragmas",  # nvcc's #pragma unroll
        ] + ([
            "-fno-sanitize=address",  # --config=asan: the two cannot instrument one file
            "-fsanitize=thread",
            "--param=tsan-instrument-func-entry-exit=0",
        ] if instrument else []),
        defines = ["STABILITY_HAS_CUDA=1"],
        deps = deps + ["//stability/ops/cuda/emulator", "//third_party:dnnl", "@local_cuda//:headers"] +
               ([_INSTRUMENT_RUNTIMES[instrument]] if instrument else []),
        testonly = True,
        **kwargs
    )

def cuda_emulator_cc_library(name, **kwargs):
    """The emulator's own cc_library: it compiles against the CUDA toolkit's headers, so it
    exists only where they do."""
    if not CUDA_AVAILABLE:
        return
    native.cc_library(name = name, **kwargs)

def cuda_emulated_binary(name, **kwargs):
    """A cc_binary that exists only where the emulator can be built (a CUDA toolkit's headers)."""
    if not CUDA_AVAILABLE:
        return
    native.cc_binary(name = name, **kwargs)

def cuda_emulated_test(name, **kwargs):
    """A cc_test that exists only where the emulator can be built (a CUDA toolkit's headers)."""
    if not CUDA_AVAILABLE:
        return
    native.cc_test(name = name, **kwargs)
