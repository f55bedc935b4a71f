"""End-to-end checks of the `stability` binary: exit codes and what it prints."""
import os
import subprocess

BIN = os.path.join(os.environ.get("TEST_SRCDIR", ""), "stability/cli/stability")


def run(*args, env=None):
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=env, timeout=60)


def test_info_reports_version_backends_and_data(tmp_path):
    env = dict(os.environ, STABILITY_DATA_DIR=str(tmp_path))
    r = run("info", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("stability 0.")
    assert "cpu:   always available" in r.stdout
    assert "GEMM: oneDNN" in r.stdout
    assert "cuda:" in r.stdout
    # An empty data dir: every bundled file is reported missing, with the fix.
    assert r.stdout.count("MISSING (run: bash tools/setup.sh)") == 3
    assert str(tmp_path) in r.stdout


def test_unknown_subcommand_is_named_and_fails():
    r = run("trian")
    assert r.returncode == 2
    assert "unknown subcommand 'trian'" in r.stderr
    assert "info" in r.stderr


def test_no_subcommand_prints_usage():
    r = run()
    assert r.returncode == 2
    assert "usage: stability <subcommand>" in r.stderr


def test_info_rejects_arguments():
    r = run("info", "--bogus")
    assert r.returncode == 2
    assert "unexpected argument '--bogus'" in r.stderr
