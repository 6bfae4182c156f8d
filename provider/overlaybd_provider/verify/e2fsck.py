"""``e2fsck -fn`` on a sparse *metadata-only* export of the merged image (an independent judge).

e2fsck never reads file data (only superblocks, descriptors, bitmaps, inode tables, extent
tree and indirect blocks, directory, xattr and symlink blocks and the journal), so the export
holds only those blocks, as found by the checker's pass 1, at their offsets in a sparse file of
the device's size; everything else stays a hole. Disk use is the stored metadata (for a
typical image 1-3 % of its data), never the 64 GiB device nor the file data. e2fsck parses
those blocks itself: a block the checker failed to export reads as zeros and shows up as an
e2fsck error, it cannot hide one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from overlaybd_provider.verify.device import BLOCK, ZERO_BLOCK, BlockDevice
from overlaybd_provider.verify.errors import VerifyError

_CHUNK_BLOCKS = 256
_OK_LINE = re.compile(
    r"^(e2fsck \d.*|Pass [1-5][A-Z]?: .*|.*: \d+/\d+ files \(.*\), \d+/\d+ blocks|\s*Using EXT2FS Library.*"
    r"|.*\*{5,}.*|\s*)$")  # banners: ***** FILE SYSTEM WAS MODIFIED *****, ********** WARNING: ...
_ANSWER = re.compile(r"\s*(Fix|Clear|Salvage|Relocate|Recreate|Optimize|Abort|Ignore error|Connect to /lost\+found|"
                     r"Delete file|Clone multiply-claimed blocks|Clear inode|Clear HTree index)\? no\s*$")
_ENV = {**os.environ, "LC_ALL": "C", "PAGER": "__none__"}


@dataclass
class FsckResult:
    ran: bool
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)
    export_bytes: int = 0
    reason: str = ""

    def to_dict(self) -> dict:
        return {"ran": self.ran, "exit_code": self.exit_code, "problems": self.problems,
                "export_bytes": self.export_bytes, **({"reason": self.reason} if self.reason else {})}


def find_e2fsck() -> str | None:
    """``$OVERLAYBD_E2FSCK`` (a path; empty: treat e2fsprogs as absent), else e2fsck on PATH or in /sbin."""
    forced = os.environ.get("OVERLAYBD_E2FSCK")
    if forced is not None:
        return forced or None
    return shutil.which("e2fsck") or shutil.which("e2fsck", path="/usr/sbin:/sbin")


def export_metadata(dev: BlockDevice, runs: list[tuple[int, int]], out_path: str | os.PathLike[str]) -> int:
    """Write the stored blocks of ``runs`` at their offsets; returns the bytes written."""
    written = 0
    with open(out_path, "wb") as out:
        out.truncate(dev.size)
        fd = out.fileno()
        for start, count in sorted(runs):
            for blk, n in dev.mapped_runs(start, count):
                for k in range(0, n, _CHUNK_BLOCKS):
                    take = min(_CHUNK_BLOCKS, n - k)
                    data = dev.read_blocks(blk + k, take)
                    for j in range(take):
                        block = data[j * BLOCK:(j + 1) * BLOCK]
                        if block != ZERO_BLOCK:
                            os.pwrite(fd, block, (blk + k + j) * BLOCK)
                            written += BLOCK
    return written


def parse_output(text: str) -> list[str]:
    """e2fsck's problem lines, without banner, pass headers, summary and '? no' answers."""
    out = []
    for line in text.splitlines():
        line = _ANSWER.sub("", line).rstrip()
        if line and not _OK_LINE.match(line):
            out.append(line.strip())
    return out


class E2fsckRun:
    """``e2fsck -fn`` on the metadata export, started at once and collected with :meth:`wait`, so it
    runs on another core while the tree is compared."""

    def __init__(self, dev: BlockDevice, runs: list[tuple[int, int]], *, work_dir: str | os.PathLike[str] | None,
                 binary: str, timeout: float = 3600.0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="overlaybd-verify-fsck-", dir=work_dir)
        self.image = Path(self._tmp.name, "metadata.raw")
        self.timeout = timeout
        try:
            self.written = export_metadata(dev, runs, self.image)
            self._proc = subprocess.Popen([binary, "-fn", str(self.image)], stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, env=_ENV)
        except OSError as exc:
            self._tmp.cleanup()
            raise VerifyError(f"e2fsck could not run on the metadata export in {self._tmp.name}: "
                              f"{exc.strerror or exc}") from None

    def wait(self) -> FsckResult:
        try:
            out, _ = self._proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise VerifyError(f"e2fsck did not finish within {self.timeout:.0f} s") from None
        finally:
            self._tmp.cleanup()
        text = out.decode("utf-8", "replace").replace(str(self.image), "image")
        code = self._proc.returncode
        if code >= 8:
            raise VerifyError(f"e2fsck failed (exit {code}): {' / '.join(text.strip().splitlines()[-2:])}")
        return FsckResult(True, code, parse_output(text) if code else [], self.written)

    def cancel(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._tmp.cleanup()
