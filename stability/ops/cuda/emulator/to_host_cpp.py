"""A .cu file as host C++ for the CUDA emulator (cuda_emulator.h says why and how).

    python3 to_host_cpp.py in.cu out.cc

Three rewrites, of syntax only nvcc knows:
  K<<<grid, block[, smem[, stream]]>>>(args)  ->  ::emu::Launch(K, "K", grid, block...)(args)
    (K wrapped in a generic lambda where K is a template whose parameters the arguments deduce)
  extern __shared__ [__align__(n)] T name[];   ->  T* name = static_cast<T*>(::emu::DynamicShared());
  __noinline__                                ->  __attribute__((noinline))
and three for the emulator's runtime:
  namespace {  ->  namespace _emu_<file> {} using namespace _emu_<file>; namespace _emu_<file> {
    (in a .cu: its unnamed namespace named after the file, as nvcc does; GCC names every
    file's unnamed namespace alike and, for a template instantiated with a template template
    argument from one, emits a weak symbol, so two files' ForHeadDim<LaunchForward> became
    one and the tensor-core attention's forward ran the fp32 kernel's launcher)
  __shared__ T a[n], b;  ->  __shared__ T a[n], b; static const bool ... = ::emu::RegisterShared(&a, sizeof(a)) ...
    (each static shared variable made known to the scheduler, which fills it with 0xff
    before every block and lets the race checker watch it: GCC drops a section attribute
    on the statics of template functions, so a linker section cannot collect them)
  __global__ void K(Batch b, ...)  ->  __global__ void K(const Batch& b, ...)
    (a struct the file declares, up to 4 KB of buffers, is not copied for each of a launch's
    threads; a kernel that writes such a parameter then fails to compile: copy it in the kernel)
Headers (.cuh) go through the same rewrites. Everything else is left as written; the line count is kept, so compiler messages point at
the .cu file's lines (a #line directive names it).
"""

import re
import sys

_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:\s]+?)\s+(\w+)\s*\[\s*\]\s*;")
_NAME_CHARS = re.compile(r"[\w:]")


def _kernel_start(text, end):
    """Start of the kernel expression that ends at `end` (a name, maybe with <template args>)."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if i > 0 and text[i - 1] == ">":  # template arguments: back to the matching '<'
        depth = 0
        while i > 0:
            i -= 1
            if text[i] == ">":
                depth += 1
            elif text[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and _NAME_CHARS.match(text[i - 1]):
        i -= 1
    return i


def _struct_parameters_by_reference(text):
    structs = set(re.findall(r"\bstruct\s+(\w+)\s*\{", text))
    if not structs:
        return text
    out = []
    pos = 0
    for m in re.finditer(r"__global__[^(;{]*?\b\w+\s*\(", text):
        depth, end = 1, m.end()
        while depth > 0 and end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        params = re.sub(r"(^|[(,])(\s*)(" + "|".join(sorted(structs)) + r")(\s+\w+\s*)(?=[,)])",
                        r"\1\2const \3&\4", text[m.end() - 1:end])
        out.append(text[pos:m.end() - 1] + params)
        pos = end
    out.append(text[pos:])
    return "".join(out)


_STATIC_SHARED = re.compile(r"(?<!extern )\b__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([^;{}()]+);")


def _split_top_level(text):
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _register_static_shared(m):
    line_start = m.string.rfind("\n", 0, m.start()) + 1
    if "//" in m.string[line_start:m.start()]:  # in a comment
        return m.group(0)
    names = []
    for declarator in _split_top_level(m.group(1)):
        name = re.findall(r"(\w+)\s*(?:\[|$)", declarator.strip())
        if not name:
            raise SystemExit(f"no variable name in the __shared__ declaration '{m.group(0)}'")
        names.append(name[0])
    registered = " ".join(
        f"static const bool emu_shared_{n}_ = ::emu::RegisterShared(&{n}, sizeof({n})); (void)emu_shared_{n}_;"
        for n in names)
    return f"{m.group(0)} {registered}"


def _unnamed_namespaces_named(text, path):
    name = "_emu_" + re.sub(r"\W", "_", path)
    return re.sub(r"\bnamespace\s*\{", f"namespace {name} {{}} using namespace {name}; namespace {name} {{", text)


def rewrite(text, path):
    if not path.endswith(".cuh"):  # a header's unnamed namespace stays each includer's own
        text = _unnamed_namespaces_named(text, path)
    text = _struct_parameters_by_reference(text)
    text = _STATIC_SHARED.sub(_register_static_shared, text)
    # A macro could not do this one: libstdc++ spells the attribute __noinline__ too.
    text = re.sub(r"\b__noinline__\b", "__attribute__((noinline))", text)
    text = _EXTERN_SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = static_cast<{m.group(1)}*>(::emu::DynamicShared());",
                              text)
    out = []
    pos = 0
    while True:
        open_at = text.find("<<<", pos)
        if open_at < 0:
            break
        close_at = text.find(">>>", open_at)
        if close_at < 0:
            raise SystemExit(f"{path}: '<<<' without '>>>'")
        start = _kernel_start(text, open_at)
        if start < pos or start == open_at:
            raise SystemExit(f"{path}: no kernel name before '<<<' at offset {open_at}")
        kernel = text[start:open_at].strip()
        config = text[open_at + 3:close_at]
        out.append(text[pos:start])
        name = " ".join(kernel.split()).replace('"', "")
        if "<" not in kernel and re.search(r"template\s*<[^{;]*>\s*__global__[^(;{]*\b" + re.escape(kernel) + r"\s*\(",
                                           text):
            # A template kernel whose arguments deduce its parameters: a generic lambda calls it.
            kernel = f"[](auto&&... a) {{ {kernel}(static_cast<decltype(a)&&>(a)...); }}"
        out.append(f'::emu::Launch({kernel}, "{name}", {config})')
        pos = close_at + 3
    out.append(text[pos:])
    return f'#line 1 "{path}"\n' + "".join(out)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    with open(dst, "w", encoding="utf-8") as f:
        f.write(rewrite(text, src))


if __name__ == "__main__":
    main()
