"""``--flatten``: the plan of an image whose layers all go into one overlaybd layer.

The flattened layer stands for the whole chain, so it is keyed by the **top chain id**, written
``flat:sha256:…``: upstream's ``overlaybd_layers`` table is keyed by ``(host, repo, chain_id)``
alone and upstream's convertor trusts any row it finds there, so a flattened blob recorded
under the bare top chain id would be taken for the top *native* layer of that chain (by
upstream, and by our own native rows in the same repository, which share that primary key).
The prefix keeps the two apart in every table; the format id says flattened as well
(:data:`~overlaybd_provider.engine.options.FLATTEN_MARK`).
"""

from __future__ import annotations

from collections.abc import Sequence

from overlaybd_provider.engine.plan.chain import uuid_from_chain_id
from overlaybd_provider.engine.plan.model import LayerPlan

__all__ = ["FLAT_PREFIX", "flat_layer"]

FLAT_PREFIX = "flat:"


def flat_layer(layers: Sequence[LayerPlan]) -> LayerPlan:
    """One layer that applies every source layer of ``layers`` (bottom first) onto one upper
    layer: no parent, the LSMT uuid of the top chain id, each source diff_id still checked."""
    if not layers:
        raise ValueError("nothing to flatten")
    top = layers[-1]
    parts = [{"digest": lp.source_digest, "size": lp.source_size, "media_type": lp.source_media_type,
              "diff_id": lp.diff_id} for lp in layers]
    return LayerPlan(
        index=0, source_digest=top.source_digest, source_size=sum(lp.source_size for lp in layers),
        source_media_type=top.source_media_type, diff_id="", chain_id=FLAT_PREFIX + top.chain_id,
        uuid=uuid_from_chain_id(top.chain_id), parent_uuid="", parts=parts,
    )
