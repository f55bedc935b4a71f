"""The `stability` console script: runs the command-line binary shipped in the wheel."""
import os
import sys

from ._runs import cli_path


def main() -> None:
    os.execv(cli_path(), [cli_path()] + sys.argv[1:])
