"""pytest_test: a py_test that runs pytest on its sources with /usr/bin/python3.

    pytest_test(
        name = "parity_test",
        srcs = ["parity_test.py"],
        data = ["//cli:stability"],
    )
"""

def pytest_test(name, srcs, deps = [], data = [], args = [], **kwargs):
    native.py_test(
        name = name,
        srcs = srcs + ["//tools:pytest_main.py"],
        main = "//tools:pytest_main.py",
        deps = deps,
        data = data,
        args = args + ["$(location :%s)" % s for s in srcs],
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
