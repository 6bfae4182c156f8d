"""``OverlaybdVerifyOperator`` called directly: XCom summary, a difference fails at once (one line,
not retried), engine errors are one line classified like every other operator's."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from overlaybd_provider.operators import OverlaybdVerifyOperator
from overlaybd_provider.operators.failures import OverlaybdRetryPolicy, TaskError
from support.imagegen import write_image
from support.obdimages import convert
from support.registry import push_layout

LAYERS = [{"etc/motd": b"hello\n", "bin/app": b"\x7fELF" * 2000}, {"etc/motd": b"bye!!\n"}]


def _ctx() -> dict:
    return {"ti": SimpleNamespace(dag_id="unit_dag", run_id="manual__unit", task_id="verify", map_index=-1)}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[str, str, str]:
    work = tmp_path_factory.mktemp("verify-op")
    write_image(work / "src", "v1", LAYERS)
    write_image(work / "wrong", "v1", [LAYERS[0], {"etc/motd": b"BYE!!\n"}])
    src = f"oci:{work / 'src'}:v1"
    return src, convert(src, f"oci:{work / 'dst'}:v1"), f"oci:{work / 'wrong'}:v1"


def test_identical_image_returns_a_small_summary(images) -> None:
    src, dst, _wrong = images
    op = OverlaybdVerifyOperator(task_id="verify", source=src, destination=dst, fsck="always")
    out = op.execute(_ctx())
    assert out["identical"] is True and out["differences"] == 0
    assert out["summary"].startswith("0 differences: the image matches its source (")
    (plat,) = out["platforms"]
    assert plat["platform"] == "linux/amd64" and plat["e2fsck"] is True and plat["paths"] == 5
    assert len(json.dumps(out)) < 2000  # XCom stays small


def test_a_difference_fails_the_task_at_once(images) -> None:
    _src, dst, wrong = images
    op = OverlaybdVerifyOperator(task_id="verify", source=wrong, destination=dst, retries=3)
    with pytest.raises(TaskError) as info:
        op.execute(_ctx())
    assert not info.value.retryable and OverlaybdRetryPolicy().evaluate(info.value, 1, 4).action.value == "fail"
    assert str(info.value) == (
        f"verify {dst}: 1 difference: 0 mtime, 1 content, 0 size, 0 missing, 0 extra, 0 type, 0 mode, 0 owner, "
        "0 xattr, 0 symlink, 0 hardlink, 0 device, 0 filesystem")


def test_errors_are_one_line_engine_errors(images, tmp_path: Path) -> None:
    src, _dst, _wrong = images
    op = OverlaybdVerifyOperator(task_id="verify", source=src, destination=f"oci:{tmp_path / 'absent'}:v1")
    with pytest.raises(TaskError) as info:
        op.execute(_ctx())
    assert "not an OCI image layout" in str(info.value) and "\n" not in str(info.value)
    bad = OverlaybdVerifyOperator(task_id="verify", source=src, destination=src, sample="2")
    with pytest.raises(TaskError, match="--sample must be a fraction"):
        bad.execute(_ctx())


def test_registry_connections_come_from_the_hook(images, registry, registry_repo, monkeypatch) -> None:
    src, dst, _wrong = images
    for ref, tag in ((src, "src"), (dst, "obd")):
        layout, _, src_tag = ref[4:].rpartition(":")
        push_layout(Path(layout), f"{registry.host}/{registry_repo}:{tag}", registry.options(), src_ref=src_tag)
    monkeypatch.setenv("AIRFLOW_CONN_VERIFY_REG", json.dumps(
        {"conn_type": "oci_registry", "host": registry.host, "extra": {"plain_http": True}}))
    op = OverlaybdVerifyOperator(task_id="verify", source=f"{registry.host}/{registry_repo}:src",
                                 destination=f"{registry.host}/{registry_repo}:obd", platforms="linux/amd64",
                                 src_registry_conn_id="verify_reg", dst_registry_conn_id="verify_reg")
    assert op.execute(_ctx())["identical"] is True
    assert set(OverlaybdVerifyOperator.template_fields) >= {"source", "destination", "platforms", "sample", "fsck"}
