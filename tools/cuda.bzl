"""cuda_library: compiles .cu files with nvcc and returns CcInfo like a cc_library.

    cuda_library(
        name = "device_query",
        srcs = ["device_query.cu"],
        hdrs = ["device_query.h"],
        deps = ["//stability/base", "@local_cuda//:cudart"],
    )

nvcc uses the C++ toolchain's compiler as host compiler (-ccbin), the same C++ standard
as the rest of the tree, and by default emits SASS for sm_80 (A100) and sm_90a (H100/H200)
plus compute_90 PTX for newer cards. Objects are position independent, so a cuda_library
links into binaries, tests and the Python extension alike.

Where no CUDA toolkit exists (@local_cuda//:defs.bzl says CUDA_AVAILABLE = False) the
macro builds `cpu_fallback_srcs` as a cc_library instead: the same API, reporting that
CUDA was not built. Code that needs CUDA at build time checks `STABILITY_HAS_CUDA`.
"""

load("@bazel_tools//tools/cpp:toolchain_utils.bzl", "find_cpp_toolchain")
load("@local_cuda//:defs.bzl", "CUDA_AVAILABLE", "CUDA_PATH")

DEFAULT_CUDA_ARCHS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_90,code=compute_90",
]

def _cuda_library_impl(ctx):
    cc_toolchain = find_cpp_toolchain(ctx)
    feature_configuration = cc_common.configure_features(
        ctx = ctx,
        cc_toolchain = cc_toolchain,
        requested_features = ctx.features,
        unsupported_features = ctx.disabled_features,
    )
    dep_infos = [d[CcInfo] for d in ctx.attr.deps]
    dep_compilation = [i.compilation_context for i in dep_infos]

    public_hdrs = ctx.files.hdrs
    own_compilation = cc_common.create_compilation_context(
        headers = depset(public_hdrs),
        defines = depset(ctx.attr.defines),
    )
    all_headers = depset(
        public_hdrs + ctx.files.private_hdrs,
        transitive = [c.headers for c in dep_compilation],
    )
    include_flags = ["-I.", "-I" + ctx.bin_dir.path, "-I" + ctx.genfiles_dir.path]
    for c in dep_compilation:
        include_flags += ["-I" + p for p in c.includes.to_list()]
        include_flags += ["-I" + p for p in c.quote_includes.to_list()]  # nvcc has no -iquote
        for p in c.system_includes.to_list():
            include_flags += ["-isystem", p]
        include_flags += ["-D" + d for d in c.defines.to_list()]
    include_flags += ["-D" + d for d in ctx.attr.defines]

    # nvcc by its real path: it finds cicc, ptxas and fatbinary next to itself, which a
    # sandboxed copy of bin/nvcc would not.
    nvcc = CUDA_PATH + "/bin/nvcc"
    objects = []
    for src in ctx.files.srcs:
        obj = ctx.actions.declare_file("_objs/{}/{}.pic.o".format(ctx.label.name, src.basename))
        args = ctx.actions.args()
        args.add("-ccbin", cc_toolchain.compiler_executable)
        args.add_all(["-x", "cu", "-c", "-std=c++20", "-O3", "--expt-relaxed-constexpr"])

        # Intermediates beside the object, not in /tmp: sandboxed actions each run as PID 2
        # in their own namespace, so nvcc's /tmp/tmpxft_<pid>_... names collide between
        # parallel compiles ("cannot open source file /tmp/tmpxft_00000002_...").
        args.add("--objdir-as-tempdir")
        args.add_all(["-Xcompiler", "-fPIC", "-Xcompiler", "-fopenmp", "-Xcompiler", "-ffp-contract=off"])
        args.add_all(ctx.attr.archs)
        args.add_all(include_flags)
        args.add_all(ctx.attr.copts)
        args.add("-o", obj)
        args.add(src)
        ctx.actions.run(
            executable = nvcc,
            arguments = [args],
            inputs = depset([src], transitive = [all_headers, cc_toolchain.all_files]),
            outputs = [obj],
            mnemonic = "NvccCompile",
            progress_message = "nvcc {}".format(src.short_path),
            use_default_shell_env = True,
        )
        objects.append(obj)

    compilation_outputs = cc_common.create_compilation_outputs(
        objects = depset(objects),
        pic_objects = depset(objects),
    )
    linking_context, _ = cc_common.create_linking_context_from_compilation_outputs(
        actions = ctx.actions,
        feature_configuration = feature_configuration,
        cc_toolchain = cc_toolchain,
        compilation_outputs = compilation_outputs,
        name = ctx.label.name,
        alwayslink = ctx.attr.alwayslink,
        disallow_dynamic_library = True,
    )
    own = CcInfo(compilation_context = own_compilation, linking_context = linking_context)
    return [
        DefaultInfo(files = depset(objects)),
        cc_common.merge_cc_infos(direct_cc_infos = [own], cc_infos = dep_infos),
    ]

_cuda_library = rule(
    implementation = _cuda_library_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = [".cu"]),
        "hdrs": attr.label_list(allow_files = [".h", ".cuh"]),
        "private_hdrs": attr.label_list(allow_files = [".h", ".cuh"]),
        "deps": attr.label_list(providers = [CcInfo]),
        "defines": attr.string_list(),
        "copts": attr.string_list(),
        "archs": attr.string_list(default = DEFAULT_CUDA_ARCHS),
        "alwayslink": attr.bool(default = False),
        "_cc_toolchain": attr.label(default = "@bazel_tools//tools/cpp:current_cc_toolchain"),
    },
    fragments = ["cpp"],
    toolchains = ["@bazel_tools//tools/cpp:toolchain_type"],
    incompatible_use_toolchain_transition = True,
)

def cuda_library(name, srcs, hdrs = [], deps = [], cpu_fallback_srcs = [], **kwargs):
    """A library of .cu files; without a CUDA toolkit, `cpu_fallback_srcs` as a cc_library."""
    cu_hdrs = [h for h in hdrs if h.endswith(".cuh")]
    if CUDA_AVAILABLE:
        _cuda_library(
            name = name,
            srcs = srcs,
            hdrs = hdrs,
            deps = deps + ["@local_cuda//:headers"],
            defines = ["STABILITY_HAS_CUDA=1"],
            **kwargs
        )
    else:
        native.cc_library(
            name = name,
            srcs = cpu_fallback_srcs,
            hdrs = [h for h in hdrs if h not in cu_hdrs],
            deps = deps,
            alwayslink = kwargs.get("alwayslink", False),
            visibility = kwargs.get("visibility"),
            testonly = kwargs.get("testonly", False),
        )
