"""Loop and artifact detection: our own pushes, signatures, SBOMs, charts and overlaybd images are
never converted; the run id is one per digest and destination."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from overlaybd_provider.engine.convert import convert_image
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.events.inspect import inspect_pushed, manifest_verdict
from overlaybd_provider.events.payloads import PushEvent
from overlaybd_provider.events.planner import plan_events, push_run_id
from overlaybd_provider.events.rules import parse_rules
from overlaybd_provider.oci.client import RegistryClient
from support.registry import push_layout

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "data" / "notifications"
sys.path.insert(0, str(REPO / "scripts"))
import demo_image  # noqa: E402

DIGEST = "sha256:" + "cd" * 32
#: Airflow's default [scheduler] allowed_run_id_pattern
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_.~:+-]+$")
RULES = parse_rules(
    {
        "rules": [
            {"name": "obd", "repository": "team/**", "destination": "{registry}/{repo}:{tag}-obd"},
            {"name": "mirror", "repository": "team/app", "destination": "{registry}/obd/{repo}:{digest_short}"},
        ]
    }
)


def push(tag: str = "v1", repo: str = "team/app", ua: str | None = "skopeo/1.9.3", digest: str = DIGEST) -> PushEvent:
    return PushEvent(kind="distribution", registry="reg.example:5000", repository=repo, tag=tag, digest=digest,
                     user_agent=ua)


def reasons(*events: PushEvent) -> list[str]:
    return [i.reason for i in plan_events(events, RULES).ignored]


def test_a_push_matching_two_rules_plans_two_conversions_with_stable_run_ids():
    plan = plan_events([push()], RULES)
    assert plan.ignored == []
    dests = {p.rule: p.destination for p in plan.planned}
    assert dests == {"obd": "reg.example:5000/team/app:v1-obd", "mirror": "reg.example:5000/obd/team/app:" + "cd" * 6}
    for item in plan.planned:
        assert item.run_id == push_run_id(DIGEST, item.destination) and RUN_ID_RE.match(item.run_id)
        assert item.run_id.startswith("push__" + "cd" * 6 + "__")
    again = plan_events([push()], RULES)
    assert [p.run_id for p in again.planned] == [p.run_id for p in plan.planned]
    other = plan_events([push(digest="sha256:" + "ef" * 32)], RULES)
    assert not {p.run_id for p in other.planned} & {p.run_id for p in plan.planned}


def test_three_tags_of_one_digest_share_the_digest_addressed_destination():
    plan = plan_events([push("v1"), push("v1.0"), push("latest")], RULES)
    mirror = {p.run_id for p in plan.planned if p.rule == "mirror"}
    per_tag = {p.run_id for p in plan.planned if p.rule == "obd"}
    assert len(mirror) == 1 and len(per_tag) == 3  # one run per destination


def test_our_own_outputs_are_not_converted():
    assert reasons(push("v1-obd")) == ["matches the destination of rule 'obd' (converter output)"]
    assert reasons(push("cdcdcdcdcdcd", repo="obd/team/app")) == [
        "matches the destination of rule 'mirror' (converter output)"
    ]
    assert reasons(push(ua="overlaybd-provider")) == ["pushed by the overlaybd converter (its user agent)"]


def test_signature_tags_and_unmatched_repositories_are_not_converted():
    assert reasons(push("sha256-" + "cd" * 32 + ".sig"), push("sha256-" + "cd" * 32 + ".att")) == [
        "a signature/attestation/SBOM tag (sha256-<digest>.*)"
    ] * 2
    assert reasons(push(repo="other/app")) == ["no rule matches"]


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("cosign-signature-manifest.json", "not a filesystem image (layer application/vnd.dev.cosign.simplesigning.v1+json)"),
        ("helm-chart-manifest.json", "not a container image (config application/vnd.cncf.helm.config.v1+json)"),
        ("sbom-referrer-manifest.json", "a referrer of another manifest (signature, SBOM or attestation)"),
    ],
)
def test_artifacts_are_recognised_from_their_manifest(name, reason):
    assert manifest_verdict(sample(name), OCI_MANIFEST) == reason


def test_artifact_type_alone_marks_an_artifact_and_schema1_is_not_an_image():
    doc = sample("sbom-referrer-manifest.json")
    del doc["subject"]
    assert manifest_verdict(doc, OCI_MANIFEST) == "an OCI artifact (application/spdx+json)"
    v1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    assert manifest_verdict({"schemaVersion": 1}, v1) == f"not an image manifest ({v1})"


def test_an_index_is_judged_by_its_first_image_child():
    child = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 10}
    attestation = {**child, "digest": "sha256:" + "2" * 64,
                   "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [attestation, child]}
    fetched = []

    def fetch(digest: str):
        fetched.append(digest)
        return json.dumps(sample("cosign-signature-manifest.json")).encode(), OCI_MANIFEST

    assert manifest_verdict(index, index["mediaType"], fetch).startswith("not a filesystem image")
    assert fetched == [child["digest"]]  # the attestation manifest is skipped
    only_attestations = {**index, "manifests": [attestation]}
    assert manifest_verdict(only_attestations, index["mediaType"], fetch) == "an index without image manifests"


def test_real_image_passes_and_its_overlaybd_conversion_is_recognised(registry, registry_repo, tmp_path):
    layout = tmp_path / "layout"
    demo_image.make_image(layout, "v1", demo_image.demo_layers("loop", base="loop"))
    copied = push_layout(layout, registry.ref(registry_repo, "v1"), registry.options())
    report = convert_image(registry.ref(registry_repo, "v1"), registry.ref(registry_repo, "v1-obd"),
                           ConvertOptions(), src_registry=registry.options(), dst_registry=registry.options())
    client = RegistryClient(registry.host, registry.options())
    try:
        assert inspect_pushed(client, registry_repo, copied.descriptor.digest) is None
        assert inspect_pushed(client, registry_repo, report.target["digest"]) == (
            "already an overlaybd image (converter output)"
        )
    finally:
        client.close()
