"""stability_fuzz_test: a libFuzzer target and its test.

    stability_fuzz_test(
        name = "safetensors_fuzz_test",
        srcs = ["safetensors_fuzzer.cc"],     # defines LLVMFuzzerTestOneInput
        corpus = glob(["testdata/safetensors_corpus/*"]),
        deps = [":safetensors"],
    )

Ordinary build: the test replays the committed seed corpus (a regression test).
`bazel test --config=fuzz` (clang + libFuzzer + ASan/UBSan): the test fuzzes for `seconds`
starting from the corpus. `bazel run --config=fuzz :<name>_bin -- -max_total_time=600 DIR`
fuzzes as long as you like.
"""

def stability_fuzz_test(name, srcs, corpus, deps = [], seconds = 10):
    binary = name + "_bin"
    native.cc_binary(
        name = binary,
        testonly = True,
        srcs = srcs,
        deps = deps + select({
            "//tools:fuzzing": [],
            "//conditions:default": ["//tools:fuzz_replay_main"],
        }),
        linkopts = select({
            "//tools:fuzzing": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
    )
    corpus_dir = native.package_name() + "/" + corpus[0].rsplit("/", 1)[0] if corpus else ""
    native.sh_test(
        name = name,
        srcs = ["//tools:run_fuzz_test.sh"],
        args = ["$(location :%s)" % binary, corpus_dir, str(seconds)],
        data = [":" + binary] + corpus,
        tags = ["fuzz"],
    )
