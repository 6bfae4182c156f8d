"""The optional accelerator (overlaybd_provider.accel, setup.py): CI runs the compiled modules, the
pure-Python fallback writes the very same bytes, and a build of an older source is never used."""

from __future__ import annotations

import gzip
import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import overlaybd_provider
import pytest
from overlaybd_provider import accel

from tests.turbo.imagesrc import feature_tars

PACKAGE_DIR = Path(overlaybd_provider.__file__).resolve().parent
CLI = [sys.executable, "-c", "import sys; from overlaybd_provider.cli.main import main; sys.exit(main())"]


def _env(mode: str, **extra: str) -> dict[str, str]:
    return {**os.environ, accel.ENV: mode, **extra}


def test_every_hot_module_runs_compiled() -> None:
    """The suite exercises the compiled build (scripts/bootstrap.sh makes it): a failed compile must
    not pass unnoticed as the fallback."""
    states = accel.status()
    assert set(states) == set(accel.MODULES)
    assert all(state == "compiled" for state in states.values()), (
        f"{accel.summary()}: run scripts/bootstrap.sh (pip install -e . --no-deps rebuilds)")
    import overlaybd_provider.ext4.changeset as changeset

    assert changeset.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    done = subprocess.run([*CLI, "--accelerator"], capture_output=True, text=True, env=_env("1"))
    assert done.returncode == 0 and done.stdout.startswith(f"accelerator on: {len(accel.MODULES)} modules")


def test_switch_off_runs_the_sources() -> None:
    code = ("import overlaybd_provider.ext4.fs as m, overlaybd_provider.formats.zfile_spool as z; "
            "print(m.__file__); print(z.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=_env("0")).stdout.split()
    assert out == [str(PACKAGE_DIR / "ext4" / "fs.py"), str(PACKAGE_DIR / "formats" / "zfile_spool.py")]
    done = subprocess.run([*CLI, "--version"], capture_output=True, text=True, env=_env("0"))
    assert done.returncode == 0 and "pure Python" in done.stdout
    assert subprocess.run([*CLI, "--accelerator"], capture_output=True, env=_env("0")).returncode == 1


def test_a_build_of_another_source_is_not_used(tmp_path: Path) -> None:
    """An edited source runs as Python until rebuilt, whatever the .so beside it."""
    copy = tmp_path / "overlaybd_provider"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    edited = copy / "ext4" / "inode.py"
    edited.write_text(edited.read_text() + "\nEDITED_AFTER_THE_BUILD = True\n")
    code = ("import overlaybd_provider.ext4.inode as i, overlaybd_provider.ext4.fs as f; "
            "from overlaybd_provider import accel; s = accel.status(); "
            "print(i.EDITED_AFTER_THE_BUILD, i.__file__.endswith('.py'), f.__file__.endswith('.py'), "
            "s['overlaybd_provider.ext4.inode'], s['overlaybd_provider.ext4.fs'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=_env("1", PYTHONPATH=str(tmp_path))).stdout.split()
    assert out == ["True", "True", "False", "stale", "compiled"]


def _small_files_tar(count: int) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in range(count // 500):
            info = tarfile.TarInfo(f"d{d:03d}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tf.addfile(info)
            for i in range(500):
                data = (f"file {d}/{i}\n" * (1 + i % 40)).encode()
                info = tarfile.TarInfo(f"d{d:03d}/f{i:04d}.txt")
                info.size, info.mtime, info.mode = len(data), 1_700_000_000 + i, 0o644
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _build_stack(workdir: Path, mode: str, layers: list[Path], extra: list[str], turbo: bool) -> list[bytes]:
    """apply-layer of each layer on the blobs below, in a fresh process per layer."""
    workdir.mkdir()
    outputs: list[Path] = []
    for n, layer in enumerate(layers):
        out = workdir / f"layer{n}.blob"
        lowers: list[str] = []
        for below, blob in zip(layers[:n], outputs, strict=True):
            lowers += ["--lower", f"turbo:{blob},{below}" if turbo else str(blob)]
        cmd = [*CLI, "apply-layer", *lowers, *extra, str(layer), str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env(mode), timeout=600)
        assert done.returncode == 0, done.stderr
        outputs.append(out)
    return [path.read_bytes() for path in outputs]


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("native-lz4", ["--algorithm", "lz4", "--bs", "4"]),
     ("native-zstd", ["--algorithm", "zstd", "--bs", "32"]),
     ("turbo-oci", ["--turbo-oci"])],
)
def test_fallback_writes_the_same_bytes(tmp_path: Path, kind: str, extra: list[str]) -> None:
    """The same layers through the compiled modules and through the pure-Python ones: identical blobs
    (whiteouts, opaque dirs, hard links across layers, xattrs, a 3 000-entry directory, 4 000 small files)."""
    tars = [*feature_tars(big=1 << 20, wide=3000), _small_files_tar(4000)]
    layers = []
    for n, tar in enumerate(tars):
        path = tmp_path / f"src{n}.tar.gz"
        path.write_bytes(gzip.compress(tar, compresslevel=1, mtime=0))
        layers.append(path)
    turbo = kind == "turbo-oci"
    compiled = _build_stack(tmp_path / "compiled", "1", layers, extra, turbo)
    pure = _build_stack(tmp_path / "pure", "0", layers, extra, turbo)
    assert [len(b) for b in compiled] == [len(b) for b in pure]
    assert compiled == pure
    assert all(compiled) and sum(map(len, compiled)) > 64 << 10


def test_no_compiler_installs_pure_python_with_the_same_output(tmp_path: Path) -> None:
    """``pip install`` where no C compiler works: the wheel holds only the ``.py`` modules, the install
    runs them, and the layers it writes are those of the compiled checkout."""
    repo = PACKAGE_DIR.parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(repo / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.so", accel.MANIFEST, "*.egg-info")
    for name in ("provider", "plugins"):
        shutil.copytree(repo / name, src / name, ignore=skip)
    no_cc = {"CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True,
                           env=_env("1", **no_cc), timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    import zipfile

    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "overlaybd_provider/ext4/changeset.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))]
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import overlaybd_provider.ext4.fs as f; from overlaybd_provider import accel; "
            "print(f.__file__); print(sorted(set(accel.status().values())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=_env("1", PYTHONPATH=str(site))).stdout.splitlines()
    assert out == [str(site / "overlaybd_provider" / "ext4" / "fs.py"), "['missing']"]
    tar = tmp_path / "layer.tar"
    tar.write_bytes(feature_tars(big=1 << 20, wide=500)[0])
    blobs = []
    for where, env in (("installed", _env("1", PYTHONPATH=str(site))), ("checkout", _env("1"))):
        out_blob = tmp_path / f"{where}.blob"
        done = subprocess.run([*CLI, "apply-layer", str(tar), str(out_blob)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        blobs.append(out_blob.read_bytes())
    assert blobs[0] == blobs[1]


def test_a_failed_rebuild_never_records_an_older_build(tmp_path: Path) -> None:
    """An in-place rebuild whose compiles fail (no compiler any more) keeps the old ``.so`` files
    on disk but records none of them: every module runs its current source."""
    repo = PACKAGE_DIR.parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(repo / name, src / name)
    shutil.copytree(repo / "provider", src / "provider", ignore=shutil.ignore_patterns("__pycache__"))
    edited = src / "provider" / "overlaybd_provider" / "ext4" / "inode.py"
    edited.write_text(edited.read_text() + "\nEDITED_AFTER_THE_BUILD = True\n")
    no_cc = {"CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, capture_output=True,
                          text=True, env=_env("1", **no_cc), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert list((src / "provider" / "overlaybd_provider" / "ext4").glob("inode.*.so"))  # the old build is there
    code = ("import overlaybd_provider.ext4.inode as i; from overlaybd_provider import accel; "
            "print(i.EDITED_AFTER_THE_BUILD, sorted(set(accel.status().values())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=_env("1", PYTHONPATH=str(src / "provider"))).stdout.split(maxsplit=1)
    assert out == ["True", "['missing']\n"]
