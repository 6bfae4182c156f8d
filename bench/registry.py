"""A throw-away local ``docker-registry`` (distribution) for the registry → registry benchmarks.

Listens on 127.0.0.1 at a free port with its storage in a temporary directory, with blob delete
enabled; images are pushed into it from the corpus' OCI layout with ``skopeo copy`` (plain HTTP).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from measure import MissingCommand

CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> str:
    path = shutil.which("docker-registry") or shutil.which("registry")
    if path is None:
        raise MissingCommand("docker-registry is not installed (scripts/bootstrap.sh installs it)")
    return path


@contextmanager
def local_registry(workdir: Path | None = None) -> Iterator[str]:
    """Starts a registry and yields its ``host:port``; stops it (only that process) on exit."""
    binary = _binary()
    with tempfile.TemporaryDirectory(prefix="bench-registry-", dir=workdir) as tmp:
        port = _free_port()
        config = Path(tmp) / "config.yml"
        config.write_text(CONFIG.format(root=Path(tmp) / "storage", port=port))
        log = (Path(tmp) / "registry.log").open("wb")
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not start: {(Path(tmp) / 'registry.log').read_text()}")
                time.sleep(0.1)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def push_layout(layout: Path, tag: str, dest: str) -> None:
    """``skopeo copy oci:LAYOUT:TAG docker://DEST`` over plain HTTP, keeping the manifest as it is."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise MissingCommand("skopeo is not installed (scripts/bootstrap.sh installs it)")
    subprocess.run([skopeo, "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                    f"docker://{dest}"], check=True)
