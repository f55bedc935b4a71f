"""Repository rule @local_cuda: the CUDA toolkit when one is installed, else an empty stand-in.

With a toolkit (nvcc under $CUDA_PATH, default /usr/local/cuda) the repository links its
include/, lib64/ and bin/ and defines cudart, cublas, cublasLt, cudnn and nccl targets;
defs.bzl says CUDA_AVAILABLE = True. Without one (or with STABILITY_NO_CUDA=1, see
`--config=nocuda`) the same target names exist but are empty and CUDA_AVAILABLE = False,
so every CPU target still builds and the CUDA backend compiles to its "not built" form.
"""

_LIBS = {
    "cudart": ["cudart"],
    "cublas": ["cublas", "cublasLt"],
    "cudnn": ["cudnn"],
    "nccl": ["nccl"],
}

def _cuda_configure_impl(rctx):
    cuda_path = rctx.os.environ.get("CUDA_PATH", "/usr/local/cuda")
    disabled = rctx.os.environ.get("STABILITY_NO_CUDA", "") == "1"
    nvcc = rctx.path(cuda_path + "/bin/nvcc")
    available = nvcc.exists and not disabled

    build = ['package(default_visibility = ["//visibility:public"])', ""]
    if available:
        for d in ["include", "lib64", "bin", "nvvm"]:
            if rctx.path(cuda_path + "/" + d).exists:
                rctx.symlink(cuda_path + "/" + d, d)
        build.append('filegroup(name = "nvcc", srcs = ["bin/nvcc"])')
        build.append("""cc_library(
    name = "headers",
    hdrs = glob(["include/**"]),
    includes = ["include", "include/cccl"],
)""")
        for name, libs in _LIBS.items():
            build.append("""cc_library(
    name = "{name}",
    linkopts = ["-L{path}/lib64", "-Wl,-rpath,{path}/lib64"] + {links},
    deps = [":headers"],
)""".format(name = name, path = cuda_path, links = ["-l" + l for l in libs]))
    else:
        build.append('filegroup(name = "nvcc", srcs = [])')
        build.append('cc_library(name = "headers")')
        for name in _LIBS:
            build.append('cc_library(name = "{}")'.format(name))

    rctx.file("BUILD", "\n".join(build) + "\n")
    rctx.file("defs.bzl", "CUDA_AVAILABLE = {}\nCUDA_PATH = {}\n".format(
        available,
        repr(cuda_path if available else ""),
    ))

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["CUDA_PATH", "STABILITY_NO_CUDA"],
    local = True,
)
