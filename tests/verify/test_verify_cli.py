"""The ``overlaybd verify`` command line: JSON report, sampling, exit codes, one-line errors, registries."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from support.obdimages import convert, edit_config, index_layout, verify_cli
from support.paths import overlaybd_cli
from support.registry import push_layout

from .test_verify_differences import wrong_source  # noqa: F401 - module fixture reused here


def _json(*args: str, env: dict | None = None) -> tuple[int, dict]:
    proc = subprocess.run([*overlaybd_cli(), "verify", *args, "--json"], capture_output=True, text=True,
                          env=env, timeout=900, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_json_report_has_everything(feature_images) -> None:
    src, dst = feature_images
    rc, report = _json(src, dst)
    assert rc == 0 and report["identical"] is True and report["differences"] == 0
    assert report["source"] == src and report["destination"] == dst
    assert report["options"] == {"platforms": [], "fsck": "auto", "sample": 1.0}
    (plat,) = report["platforms"]
    assert plat["platform"] == "linux/amd64" and plat["layers"] == 3
    assert plat["image_digest"].startswith("sha256:") and plat["source_digest"].startswith("sha256:")
    assert set(plat["counts"]) == {"mtime", "content", "size", "missing", "extra", "type", "mode", "owner", "xattr",
                                   "symlink", "hardlink", "device", "filesystem"}
    assert plat["differences"] == [] and plat["differences_truncated"] is False
    stats = plat["stats"]
    assert stats["paths"] > 2500 and stats["files_hashed"] > 1500
    assert 6 << 20 < stats["bytes_hashed"] <= stats["source_bytes_hashed"]  # the source also hashed deleted files
    assert plat["structural"]["checked"] is True and plat["structural"]["problems"] == 0
    assert plat["e2fsck"]["ran"] is True and plat["e2fsck"]["exit_code"] == 0
    assert 0 < plat["e2fsck"]["export_bytes"] < 64 << 20  # metadata only, not the 64 GiB device


def _share(path: str) -> float:
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") / 2 ** 64


def test_sample_hashes_a_reproducible_fraction_chosen_by_path(feature_images, wrong_source) -> None:  # noqa: F811
    _src, dst = feature_images
    src, _tars = wrong_source
    _rc, full = _json(src, dst)
    share = _share("/srv/sticky/new")  # the file whose content differs (same size)
    below, above = max(share - 1e-6, 1e-9), min(share + 1e-6, 1.0)
    _rc, skipped = _json(src, dst, "--sample", f"{below:.9f}")
    _rc, hashed = _json(src, dst, "--sample", f"{above:.9f}")
    counts = lambda r: r["platforms"][0]["counts"]  # noqa: E731
    assert counts(full)["content"] == 1 and counts(hashed)["content"] == 1
    assert counts(skipped)["content"] == 0
    assert {k: v for k, v in counts(skipped).items() if k != "content"} == \
           {k: v for k, v in counts(full).items() if k != "content"}  # metadata is always compared
    _rc, half = _json(src, dst, "--sample", "0.5")
    _rc, again = _json(src, dst, "--sample", "0.5")
    stats = half["platforms"][0]["stats"]
    assert stats["files_hashed"] == again["platforms"][0]["stats"]["files_hashed"]
    assert 0.35 < stats["files_hashed"] / full["platforms"][0]["stats"]["files_hashed"] < 0.65
    assert half["platforms"][0]["differences"] == again["platforms"][0]["differences"]


def test_without_e2fsprogs_the_structural_checks_decide(feature_images) -> None:
    src, dst = feature_images
    env = {**os.environ, "OVERLAYBD_E2FSCK": ""}
    rc, report = _json(src, dst, env=env)
    (plat,) = report["platforms"]
    assert rc == 0 and plat["e2fsck"]["ran"] is False and "not installed" in plat["e2fsck"]["reason"]
    proc = subprocess.run([*overlaybd_cli(), "verify", src, dst], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0 and "structural checks passed)" in proc.stdout and "e2fsck" not in proc.stdout
    proc = subprocess.run([*overlaybd_cli(), "verify", src, dst, "--fsck", "always"], capture_output=True, text=True,
                          env=env, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "overlaybd: error: --fsck always: e2fsck is not installed (install e2fsprogs)\n"
    rc, report = _json(src, dst, "--fsck", "never")
    assert report["platforms"][0]["e2fsck"] == {"ran": False, "exit_code": None, "problems": [], "export_bytes": 0,
                                                "reason": "--fsck never"}


def test_missing_image_is_one_line_exit_2(feature_images, tmp_path: Path) -> None:
    src, dst = feature_images
    for wrong in (f"oci:{tmp_path / 'absent'}:v1", dst.rsplit(":", 1)[0] + ":no-such-tag"):
        proc = verify_cli(src, wrong)
        assert proc.returncode == 2 and proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("overlaybd: error: "), proc.stderr


def test_source_layer_not_matching_its_diff_id_is_an_error(feature_images) -> None:
    src, dst = feature_images

    def lie(config: dict) -> None:
        config["rootfs"]["diff_ids"][1] = "sha256:" + "0" * 64

    proc = verify_cli(edit_config(src, "lying", lie), dst)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("overlaybd: error: oci:") and line.endswith(
        "uncompressed content has digest sha256:" + line.split("digest sha256:")[1].split(",")[0]
        + ", the config's diff_id is sha256:" + "0" * 64), line
    assert " layer 2 (sha256:" in line


def test_bad_arguments_exit_2(feature_images) -> None:
    src, dst = feature_images
    for bad in (["--sample", "0"], ["--sample", "1.5"], ["--fsck", "sometimes"]):
        proc = verify_cli(src, dst, *bad)
        assert proc.returncode == 2 and "error:" in proc.stderr


def test_registry_images_verify_like_layouts(feature_images, registry, registry_repo) -> None:
    src, dst = feature_images
    src_ref, dst_ref = f"{registry.host}/{registry_repo}:src", f"{registry.host}/{registry_repo}-obd:v1"
    for layout_ref, ref in ((src, src_ref), (dst, dst_ref)):
        layout, _, tag = layout_ref[4:].rpartition(":")
        push_layout(Path(layout), ref, registry.options(), src_ref=tag)
    proc = verify_cli(src_ref, dst_ref, "--plain-http", "--platform", "linux/amd64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("0 differences: the image matches its source (")
    proc = verify_cli(src_ref, dst_ref, "--plain-http", "--platform", "linux/arm64")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("image platform linux/amd64 does not match --platform")
    proc = verify_cli(src_ref, f"{registry.host}/{registry_repo}-obd:missing", "--plain-http")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_bad_credentials_are_one_line_without_the_secret(feature_images, auth_registry, registry_repo) -> None:
    src, dst = feature_images
    ref = f"{auth_registry.host}/{registry_repo}:v1"
    layout, _, tag = dst[4:].rpartition(":")
    push_layout(Path(layout), ref, auth_registry.options(), src_ref=tag)
    proc = verify_cli(src, ref, "--plain-http", "-u", "alice:not-the-password")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("overlaybd: error: ")
    assert "not-the-password" not in proc.stderr
    ok = verify_cli(src, ref, "--plain-http", "-u", f"{auth_registry.username}:{auth_registry.password}")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_every_platform_of_an_index_is_verified(feature_tars, tmp_path: Path) -> None:
    src = index_layout(tmp_path / "src", "multi", {"linux/amd64": feature_tars[:2], "linux/arm64": feature_tars[:1]})
    dst = convert(src, f"oci:{tmp_path / 'dst'}:multi")
    rc, report = _json(src, dst)
    assert rc == 0 and [p["platform"] for p in report["platforms"]] == ["linux/amd64", "linux/arm64"]
    assert report["platforms"][0]["layers"] == 2 and report["platforms"][1]["layers"] == 1
    proc = verify_cli(src, dst)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 2
    assert lines[0].startswith("linux/amd64: 0 differences") and lines[1].startswith("linux/arm64: 0 differences")
    rc, only = _json(src, dst, "--platform", "linux/arm64")
    assert [p["platform"] for p in only["platforms"]] == ["linux/arm64"]
    # the arm64 image verified against the amd64 source: the platforms must pair up
    wrong = index_layout(tmp_path / "wrong", "multi", {"linux/amd64": feature_tars[:2], "linux/arm64": feature_tars[:2]})
    proc = verify_cli(wrong, dst)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and lines[0].startswith("linux/amd64: 0 differences")
    assert lines[1].startswith("linux/arm64: ") and " 0 missing," not in lines[1]  # layer 2's files
    assert all(ln.startswith(("linux/arm64: /srv/", "linux/arm64: ... and ")) for ln in lines[2:])
