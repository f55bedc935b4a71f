"""Writes a wheel (PEP 427) with the standard library only; run by //pywheel:wheel.

    build_wheel.py --out F.whl --name stability --version V --tag cp311-cp311-linux_x86_64 \
        --file stability/__init__.py=path ... [--exec stability/bin/stability=path] \
        --entry-point stability=stability._cli:main --requires numpy

Deterministic: entries sorted, fixed timestamps, so the same inputs give the same bytes.
"""
import argparse
import base64
import hashlib
import zipfile

EPOCH = (1980, 1, 1, 0, 0, 0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--summary", default="")
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--exec", action="append", default=[])
    p.add_argument("--entry-point", action="append", default=[])
    p.add_argument("--requires", action="append", default=[])
    a = p.parse_args()

    files = []  # (archive name, bytes, mode)
    for spec, mode in [(f, 0o644) for f in a.file] + [(f, 0o755) for f in a.exec]:
        arc, path = spec.split("=", 1)
        with open(path, "rb") as f:
            files.append((arc, f.read(), mode))
    dist = f"{a.name}-{a.version}.dist-info"
    metadata = "\n".join(["Metadata-Version: 2.1", f"Name: {a.name}", f"Version: {a.version}",
                          f"Summary: {a.summary}", "Requires-Python: ==3.11.*"] +
                         [f"Requires-Dist: {r}" for r in a.requires]) + "\n"
    wheel = "\n".join(["Wheel-Version: 1.0", "Generator: stability tools/build_wheel.py", "Root-Is-Purelib: false",
                       f"Tag: {a.tag}"]) + "\n"
    files.append((f"{dist}/METADATA", metadata.encode(), 0o644))
    files.append((f"{dist}/WHEEL", wheel.encode(), 0o644))
    if a.entry_point:
        ep = "[console_scripts]\n" + "".join(f"{e.replace('=', ' = ', 1)}\n" for e in a.entry_point)
        files.append((f"{dist}/entry_points.txt", ep.encode(), 0o644))
    files.sort(key=lambda x: x[0])
    record = []
    for arc, data, _ in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arc},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files.append((f"{dist}/RECORD", ("\n".join(record) + "\n").encode(), 0o644))

    with zipfile.ZipFile(a.out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for arc, data, mode in files:
            info = zipfile.ZipInfo(arc, date_time=EPOCH)
            info.external_attr = (0o100000 | mode) << 16  # regular file + permissions (pip keeps the exec bit)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)


if __name__ == "__main__":
    main()
