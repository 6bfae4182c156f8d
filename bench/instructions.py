"""The converter's instruction count (issue #16): a figure that another agent's load cannot move.

    .venv/bin/python bench/instructions.py [--entries 20000] [--quick]

Runs ``valgrind --tool=callgrind`` over ``overlaybd apply-layer`` of the first ``--entries`` entries
of the corpus's 100 000-file layer (bench/corpus.py; the cut tar is cached beside it). Valgrind
follows the command through ``exec`` (an ``OVERLAYBD_BENCH_CLI`` may start with ``env``) but skips
the block compressor's interpreter, and the profile counted is the one whose command line is the
``apply-layer``: the converter process alone (tar parse, ext4 metadata, data copy into the
compressor's ring, directory build, seal). It prints the count and the blob's digest: builds that write the same bytes
print the same digest. ``OVERLAYBD_BENCH_CLI`` measures another build, as in the other benches.
Under valgrind, OpenSSL's sha256 runs without the CPU's SHA instructions: ~0.45 G of a 20 000-entry
count is the tar's and the blob's digests, far more than natively.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import corpus
from measure import build_label, overlaybd_cli

_TOTAL = re.compile(r"^(?:summary|totals): (\d+)$", re.MULTILINE)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CONVERTER = re.compile(r"^cmd: .* apply-layer ", re.MULTILINE)


def cut_tar(source: Path, entries: int) -> Path:
    """The first ``entries`` members of ``source`` as a tar of their own (written once)."""
    target = source.with_name(f"{source.stem}-first{entries}.tar")
    if target.is_file():
        return target
    partial = target.with_suffix(".part")
    with tarfile.open(source) as src, tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as out:
        for i, member in enumerate(src):
            if i >= entries:
                break
            out.addfile(member, src.extractfile(member) if member.isreg() else None)
    partial.rename(target)
    return target


def count(tar: Path, workdir: Path) -> tuple[int, str]:
    """(instructions of the converter process, blob digest) of one ``apply-layer`` of ``tar``."""
    out = workdir / "cg.%p.%n"
    # children are followed through exec (an OVERLAYBD_BENCH_CLI may start with ``env``), except the
    # block compressor, which is not the converter's work
    done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=yes",
                           "--trace-children-skip-by-arg=*zfile_worker*",
                           *overlaybd_cli(), "apply-layer", str(tar), str(workdir / "layer.blob")],
                          capture_output=True, text=True, check=True)
    digest = _DIGEST.search(done.stdout)
    if digest is None:
        raise SystemExit(f"instructions: no blob digest in {done.stdout!r}")
    totals = []
    for profile in workdir.glob("cg.*"):
        text = profile.read_text(errors="replace")
        total = _TOTAL.search(text)
        if total is not None and _CONVERTER.search(text[:4096]):
            totals.append(int(total.group(1)))
    if not totals:
        raise SystemExit(f"instructions: no profile of the converter in {workdir}")
    return max(totals), digest.group(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    corpus.add_cache_args(parser)
    parser.add_argument("--entries", type=int, default=20_000, help="entries of the small-files layer")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    data = corpus.build_corpus(args.cache_dir, quick=args.quick)
    tar = cut_tar(data.small.path, args.entries)
    with tempfile.TemporaryDirectory(prefix="obd-instr-") as tmp:
        instructions, digest = count(tar, Path(tmp))
    print(f"{tar.name}: {instructions / 1e9:.3f} G instructions in the converter, {digest}")
    print(f"({build_label()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
