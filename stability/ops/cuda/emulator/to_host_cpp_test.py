"""to_host_cpp.rewrite: nvcc-only syntax to host C++, the .cu's line count kept."""

import importlib.util
import os

import pytest

_spec = importlib.util.spec_from_file_location(
    "to_host_cpp", os.path.join(os.path.dirname(os.path.abspath(__file__)), "to_host_cpp.py"))
to_host_cpp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(to_host_cpp)


def rewrite(text):
    out = to_host_cpp.rewrite(text, "k.cu")
    first, rest = out.split("\n", 1)
    assert first == '#line 1 "k.cu"'
    assert rest.count("\n") == text.count("\n")  # compiler messages point at the .cu's lines
    return rest


def test_plain_launch():
    assert rewrite("  Add<<<Blocks(n, 256), 256>>>(x, n);\n") == \
        '  ::emu::Launch(Add, "Add", Blocks(n, 256), 256)(x, n);\n'


def test_explicit_template_launch_keeps_its_address():
    out = rewrite("Fwd<HD><<<grid, kThreads, Layout<HD>::kBytes>>>(q, k);\n")
    assert out == '::emu::Launch(Fwd<HD>, "Fwd<HD>", grid, kThreads, Layout<HD>::kBytes)(q, k);\n'


def test_deduced_template_launch_goes_through_a_generic_lambda():
    src = ("template <typename T>\n__global__ void Scale(const T* x, T* y) {}\n"
           "void Run() { Scale<<<1, 32>>>(a, b); }\n")
    out = rewrite(src)
    assert '::emu::Launch([](auto&&... a) { Scale(static_cast<decltype(a)&&>(a)...); }, "Scale", 1, 32)(a, b)' in out


def test_launch_inside_parentheses_and_over_lines():
    out = rewrite("EXPECT_DEATH((K<<<1,\n  32>>>(p)), \"x\");\n")
    assert out == 'EXPECT_DEATH((::emu::Launch(K, "K", 1,\n  32)(p)), "x");\n'


def test_extern_shared_becomes_the_launchs_dynamic_shared_memory():
    assert rewrite("  extern __shared__ __align__(128) unsigned char smem[];\n") == \
        "  unsigned char* smem = static_cast<unsigned char*>(::emu::DynamicShared());\n"
    assert rewrite("extern __shared__ float buf[];\n") == \
        "float* buf = static_cast<float*>(::emu::DynamicShared());\n"


def test_noinline_is_spelled_for_the_host_compiler():
    assert rewrite("__device__ __noinline__ float F(float v);\n") == \
        "__device__ __attribute__((noinline)) float F(float v);\n"


def test_an_unclosed_launch_is_an_error():
    with pytest.raises(SystemExit, match="without '>>>'"):
        to_host_cpp.rewrite("K<<<1, 32(x);\n", "k.cu")


def test_a_struct_the_file_declares_is_passed_to_kernels_by_const_reference():
    src = ("struct Batch {\n  float* x[4];\n};\n"
           "__global__ void Each(Batch b, float s,\n                     const Batch* p, Other o) {}\n"
           "void Host(Batch b) {}\n")
    out = rewrite(src)
    assert "__global__ void Each(const Batch& b, float s,\n                     const Batch* p, Other o) {}" in out
    assert "void Host(Batch b) {}" in out  # host functions keep their copies


def test_static_shared_variables_are_registered_where_they_are_declared():
    out = rewrite("  __shared__ float ks[kTile][HD], vs[kTile][HD];\n  __shared__ T total;\n")
    assert out.startswith("  __shared__ float ks[kTile][HD], vs[kTile][HD]; "
                          "static const bool emu_shared_ks_ = ::emu::RegisterShared(&ks, sizeof(ks));")
    assert "::emu::RegisterShared(&vs, sizeof(vs));" in out
    assert "::emu::RegisterShared(&total, sizeof(total));" in out
    assert rewrite("// __shared__ slots; one a warp\n") == "// __shared__ slots; one a warp\n"


def test_a_files_unnamed_namespace_is_named_after_the_file():
    out = rewrite("namespace a {\nnamespace {\nint x;\n}  // namespace\n}\n")
    assert "namespace _emu_k_cu {} using namespace _emu_k_cu; namespace _emu_k_cu {\nint x;" in out
    assert out.startswith("namespace a {")


def test_a_headers_unnamed_namespace_is_left_unnamed():
    out = to_host_cpp.rewrite("namespace {\nint x;\n}\n", "h.cuh")
    assert "namespace {\nint x;" in out
