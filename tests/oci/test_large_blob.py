"""Large blobs through the real registry with bounded memory, measured in a child process.

The child reports its own peak (``VmHWM``), not ``ru_maxrss``: a child of pytest inherits the
pytest process's peak RSS through exec (see :mod:`support.peakrss`), which once made this test
report 289 MB for a client that never used more than ~35 MB.
"""

from __future__ import annotations

import hashlib
import os
import random
import textwrap

import pytest
from overlaybd_provider.oci.client import RegistryClient
from support.peakrss import run_child

MIB = 1 << 20
GIB = 1 << 30
ZERO_GIB_SHA256 = "sha256:49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14"
RSS_LIMIT_MB = 150

CHILD = textwrap.dedent(
    """
    import json, logging, sys, time
    from pathlib import Path
    from overlaybd_provider.oci.client import RegistryClient
    from overlaybd_provider.oci.options import RegistryOptions

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    host, repo, src, digest, size, dest, config, timeout = sys.argv[1:]
    options = RegistryOptions(plain_http=True, docker_config=Path(config), timeout=float(timeout))
    client = RegistryClient(host, options)
    t0 = time.monotonic()
    assert client.push_blob(repo, Path(src), digest, int(size))
    t1 = time.monotonic()
    push_peak = peak_rss_mb()
    assert client.fetch_blob(repo, digest, Path(dest), int(size)) == int(size)  # digest-verified
    t2 = time.monotonic()
    print(json.dumps({"push_s": t1 - t0, "pull_s": t2 - t1, "push_peak_mb": push_peak}))
    """
)


def _push_pull(host, repo, src, digest, size, tmp_path, timeout=60.0, limit=230):
    config = tmp_path / "docker-config.json"
    config.write_text("{}")
    dest = tmp_path / "pulled"
    stats = run_child(CHILD, [host, repo, str(src), digest, str(size), str(dest), str(config), str(timeout)],
                      timeout=limit)
    return stats, dest


def test_child_peak_rss_is_the_childs_own():
    """The measurement itself: an idle child is small, 64 MiB touched by the child shows."""
    idle = run_child("import json; print(json.dumps({}))", [], timeout=30)
    busy = run_child("import json; b = bytearray(64 << 20); b[::4096] = b'x' * (16 << 10); print(json.dumps({}))",
                     [], timeout=30)
    assert idle["peak_rss_mb"] < 40
    assert busy["peak_rss_mb"] - idle["peak_rss_mb"] >= 60


@pytest.mark.timeout(240)
def test_one_gib_blob_streams_with_bounded_memory(registry, registry_repo, tmp_path):
    src = tmp_path / "zeros"
    with open(src, "wb") as f:
        f.truncate(GIB)  # sparse: zeros, written by nobody
    stats, dest = _push_pull(registry.host, registry_repo, src, ZERO_GIB_SHA256, GIB, tmp_path)
    print(f"1 GiB blob: push {stats['push_s']:.1f} s, pull {stats['pull_s']:.1f} s, "
          f"peak RSS {stats['peak_rss_mb']:.0f} MB (ru_maxrss incl. inherited {stats['ru_maxrss_mb']:.0f} MB)")
    assert stats["peak_rss_mb"] < RSS_LIMIT_MB
    assert dest.stat().st_size == GIB
    with open(dest, "rb") as f:  # spot checks; the child verified the digest
        for offset in (0, GIB // 2, GIB - 4096):
            f.seek(offset)
            assert f.read(4096) == bytes(4096)
    dest.unlink()
    # free the registry's copy too (storage.delete.enabled)
    RegistryClient(registry.host, registry.options()).delete_blob(registry_repo, ZERO_GIB_SHA256)
    assert os.path.exists(src)


def _patterned_file(path, size: int) -> str:
    """``size`` bytes that differ per MiB (a resume at a wrong offset breaks the digest)."""
    base = random.Random(7).randbytes(MIB)
    hasher = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size // MIB):
            block = i.to_bytes(8, "big") + base[8:]
            f.write(block)
            hasher.update(block)
    return f"sha256:{hasher.hexdigest()}"


@pytest.mark.timeout(240)
def test_retries_and_resumes_of_a_large_blob_stay_bounded(registry, fault_proxy, registry_repo, tmp_path):
    """256 MiB pushed in 16 MiB PATCHes and pulled back through every failure path the client
    recovers from: each recovery re-reads from the file or resumes the stream, never buffers."""
    size, timeout = 256 * MIB, 5.0
    src = tmp_path / "blob"
    digest = _patterned_file(src, size)
    patch, get = {"method": "PATCH"}, {"method": "GET", "path": "/blobs/sha256:"}
    fault_proxy.inject("status", 1, status=503, skip=2, **patch)         # resume at the confirmed offset
    fault_proxy.inject("reset", 1, after=5 * MIB, skip=4, **patch)       # broken mid-PATCH: partial chunk
    fault_proxy.inject("delay", 1, delay=timeout + 2, skip=6, **patch)   # read timeout, registry did it
    fault_proxy.inject("reset", 1, skip=8, **patch)                      # reset before the answer
    fault_proxy.inject("drop", 1, method="PUT", path="digest=")          # commit done, answer lost
    fault_proxy.inject("cut", 1, after=40 * MIB, **get)                  # download broken: Range resume
    fault_proxy.inject("reset", 1, **get)                                # resumed GET reset
    fault_proxy.inject("delay", 1, delay=timeout + 2, **get)             # resumed GET times out
    stats, dest = _push_pull(fault_proxy.host, registry_repo, src, digest, size, tmp_path, timeout=timeout)
    print(f"256 MiB blob with faults: push {stats['push_s']:.1f} s, pull {stats['pull_s']:.1f} s, "
          f"peak RSS push {stats['push_peak_mb']:.0f} MB, overall {stats['peak_rss_mb']:.0f} MB")
    assert [f.fired for f in fault_proxy.faults] == [1] * 8
    sent = [(m, h.get("Content-Range") or h.get("Range")) for (m, p), h
            in zip(fault_proxy.seen, fault_proxy.headers_seen, strict=True) if "/blobs/" in p]
    patches = [r for m, r in sent if m == "PATCH"]
    assert patches.count(f"{32 * MIB}-{48 * MIB - 1}") >= 2  # the 503'd chunk was sent again
    ranges = [r for m, r in sent if m == "GET" and r]
    assert ranges and all(r.startswith("bytes=") and int(r[6:-1]) > 0 for r in ranges)
    assert "answer was lost, but the blob is there" in stats["stderr"]
    assert stats["peak_rss_mb"] < RSS_LIMIT_MB
    assert dest.stat().st_size == size
    dest.unlink()
    RegistryClient(registry.host, registry.options()).delete_blob(registry_repo, digest)
