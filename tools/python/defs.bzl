"""The Python the wheel targets: Debian 12's CPython 3.11 (see WORKSPACE: @python_headers)."""

PYTHON_TAG = "cp311"
PLATFORM_TAG = "linux_x86_64"

def wheel_filename(distribution, version):
    """PEP 427 file name: {distribution}-{version}-{python tag}-{abi tag}-{platform tag}.whl."""
    return "%s-%s-%s-%s-%s.whl" % (distribution, version, PYTHON_TAG, PYTHON_TAG, PLATFORM_TAG)
