"""Builds on //pywheel:wheel: installs the wheel into a fresh venv (pip --no-index) and runs
the API checks (wheel_api_checks.py) with that venv's python."""
import glob
import os
import subprocess
import sys

SRC = os.environ.get("TEST_SRCDIR", "")


def test_wheel_installs_and_the_api_works(tmp_path):
    wheels = glob.glob(os.path.join(SRC, "stability/pywheel/stability-*-cp311-cp311-linux_x86_64.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    # --system-site-packages: numpy, pytest and torch come from Debian (no PyPI here).
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin/pip"), "install", "--no-index", "--quiet", wheels[0]], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, REFERENCE_DIR=os.path.join(here, "..", "reference"),
               PATH=f"{venv}/bin:" + os.environ.get("PATH", ""), PYTHONPATH="")
    r = subprocess.run([str(venv / "bin/python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.join(here, "wheel_api_checks.py")], capture_output=True, text=True, env=env,
                       cwd=str(tmp_path))
    sys.stdout.write(r.stdout[-6000:])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
