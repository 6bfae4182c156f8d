"""OCI chain ids and the LSMT uuids derived from them (image.md §3)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from overlaybd_provider.errors import OverlaybdError

__all__ = ["chain_ids", "uuid_from_chain_id"]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """``chainID[0] = diff_id[0]``; ``chainID[i] = sha256(chainID[i-1] + " " + diff_id[i])``."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not diff_id.startswith("sha256:") or len(diff_id) != 71:
            raise OverlaybdError(f"config rootfs.diff_ids: {diff_id!r} is not a sha256 digest")
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode("ascii")).hexdigest())
    return out


def uuid_from_chain_id(chain_id: str) -> str:
    """First 32 hex digits of the chain id as ``8-4-4-4-12`` (lower case, as upstream passes it)."""
    hexpart = chain_id.split(":", 1)[-1][:32]
    if len(hexpart) != 32:
        raise OverlaybdError(f"chain id {chain_id!r} is too short for a uuid")
    return f"{hexpart[:8]}-{hexpart[8:12]}-{hexpart[12:16]}-{hexpart[16:20]}-{hexpart[20:32]}"
