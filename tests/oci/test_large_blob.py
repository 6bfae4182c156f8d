"""A 1 GiB blob through the real registry with bounded memory (measured in a child process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

GIB = 1 << 30
ZERO_GIB_SHA256 = "sha256:49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14"
RSS_LIMIT_MB = 150

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from overlaybd_provider.oci.client import RegistryClient
    from overlaybd_provider.oci.options import RegistryOptions

    host, repo, src, digest, size, dest, config = sys.argv[1:]
    client = RegistryClient(host, RegistryOptions(plain_http=True, docker_config=Path(config)))
    t0 = time.monotonic()
    assert client.push_blob(repo, Path(src), digest, int(size))
    t1 = time.monotonic()
    assert client.fetch_blob(repo, digest, Path(dest), int(size)) == int(size)
    t2 = time.monotonic()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"push_s": t1 - t0, "pull_s": t2 - t1, "max_rss_mb": rss / 1024}))
    """
)


@pytest.mark.timeout(240)
def test_one_gib_blob_streams_with_bounded_memory(registry, registry_repo, tmp_path):
    src = tmp_path / "zeros"
    with open(src, "wb") as f:
        f.truncate(GIB)  # sparse: zeros, written by nobody
    dest = tmp_path / "pulled"
    config = tmp_path / "docker-config.json"
    config.write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, registry.host, registry_repo, str(src), ZERO_GIB_SHA256, str(GIB),
         str(dest), str(config)],
        capture_output=True, text=True, timeout=230, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"1 GiB blob: push {stats['push_s']:.1f} s, pull {stats['pull_s']:.1f} s, "
          f"peak RSS {stats['max_rss_mb']:.0f} MB")
    assert stats["max_rss_mb"] < RSS_LIMIT_MB
    assert dest.stat().st_size == GIB
    with open(dest, "rb") as f:  # spot checks; the child verified the digest
        for offset in (0, GIB // 2, GIB - 4096):
            f.seek(offset)
            assert f.read(4096) == bytes(4096)
    dest.unlink()
    # free the registry's copy too (storage.delete.enabled)
    from overlaybd_provider.oci.client import RegistryClient

    RegistryClient(registry.host, registry.options()).delete_blob(registry_repo, ZERO_GIB_SHA256)
    assert os.path.exists(src)
