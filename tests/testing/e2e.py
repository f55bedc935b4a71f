"""What the end-to-end tests share: the `stability` binary under test and small byte-level
datasets made with it (`stability prepare --tokenizer=bytes`)."""
import os
import subprocess

BIN = os.path.join(os.environ.get("TEST_SRCDIR", ""), "stability/cli/stability")


def byte_shards(tmp, line, repeat=400):
    """Writes `line` × repeat as one document under tmp/text and prepares tmp/shards."""
    (tmp / "text").mkdir()
    (tmp / "text" / "a.txt").write_text(line * repeat)
    r = subprocess.run([BIN, "prepare", f"--input={tmp}/text", f"--out={tmp}/shards", "--tokenizer=bytes"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return tmp / "shards"
