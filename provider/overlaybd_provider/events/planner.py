"""Cheap, synchronous decisions about pushed images: ignore (and why) or plan a conversion.

Runs while the webhook request is open, so it never touches the network: loop and artifact
checks that need the manifest come later (:mod:`.inspect`). A planned conversion carries its
deterministic run id: the same digest converted to the same destination always gets the same id,
so a repeated notification (a burst, a redelivery, a second API-server worker, the tag watcher)
finds the run already there instead of starting another.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from overlaybd_provider.events.payloads import Ignored, PushEvent
from overlaybd_provider.events.rules import Rule, RuleError, RuleSet
from overlaybd_provider.oci.options import RegistryOptions

#: what our registry client sends as User-Agent: pushes made by a conversion
OUR_USER_AGENT = RegistryOptions.user_agent
#: cosign/sigstore attach signatures, attestations and SBOMs under tags named after the digest
COSIGN_TAG_RE = re.compile(r"^sha256-[a-f0-9]{64}(?:\.[A-Za-z0-9_-]+)?$")
RUN_ID_PREFIX = "push"


def push_run_id(digest: str, destination: str) -> str:
    """``push__<digest 12 hex>__<hash of digest+destination>``: one run per digest and destination."""
    algo, _, hexpart = digest.partition(":")
    key = hashlib.sha256(f"{digest}|{destination}".encode()).hexdigest()[:16]
    return f"{RUN_ID_PREFIX}__{hexpart[:12] or algo}__{key}"


@dataclass(frozen=True)
class Planned:
    event: PushEvent
    rule: str
    dag_id: str
    run_id: str
    conf: dict[str, Any]
    src_registry_conn_id: str | None = None

    @property
    def destination(self) -> str:
        return str(self.conf["destination"])

    @property
    def fold_key(self) -> tuple[str, str]:
        """Events with the same key within the burst window become one run (the newest wins)."""
        return (self.dag_id, self.destination)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.event.ref,
            "digest": self.event.digest,
            "rule": self.rule,
            "destination": self.destination,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
        }


@dataclass
class Plan:
    planned: list[Planned] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


def skip_reason(event: PushEvent, rules: RuleSet) -> str | None:
    """Why ``event`` must not be converted, from what the notification itself says."""
    if event.user_agent and event.user_agent.startswith(OUR_USER_AGENT):
        return "pushed by the overlaybd converter (its user agent)"
    if COSIGN_TAG_RE.match(event.tag):
        return "a signature/attestation/SBOM tag (sha256-<digest>.*)"
    owner = rules.output_of(event)
    if owner is not None:
        return f"matches the destination of rule {owner!r} (converter output)"
    return None


def plan_conversion(event: PushEvent, rule: Rule) -> Planned | Ignored:
    try:
        conf = rule.run_conf(event)
    except RuleError as exc:
        return Ignored(event.ref, str(exc))
    if conf["destination"] in (event.ref, event.pinned):
        return Ignored(event.ref, f"rule {rule.name!r}: the destination is the source")
    return Planned(
        event=event,
        rule=rule.name,
        dag_id=rule.dag_id,
        run_id=push_run_id(event.digest, conf["destination"]),
        conf=conf,
        src_registry_conn_id=conf.get("src_registry_conn_id") or None,
    )


def plan_events(events: Iterable[PushEvent], rules: RuleSet) -> Plan:
    out = Plan()
    for event in events:
        reason = skip_reason(event, rules)
        if reason is None and not (matching := rules.matching(event)):
            reason = "no rule matches"
        if reason is not None:
            out.ignored.append(Ignored(event.ref, reason))
            continue
        for rule in matching:
            item = plan_conversion(event, rule)
            (out.ignored if isinstance(item, Ignored) else out.planned).append(item)
    return out
