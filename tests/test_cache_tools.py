"""``kevolve cache`` tools on a store of real entries: copies of the shipped H100 kernels, a CPU entry
from a real (tiny) search, a CPU entry whose kernel is wrong (valid checksum) and a bit-flipped file."""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import torch

from torch_kevolve import cache_tools as ct
from torch_kevolve.config import Settings
from torch_kevolve.families import get_family
from torch_kevolve.search import search_spec
from torch_kevolve.store import Entry, KernelStore, _checksum

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "kernel_cache"
FAM = get_family("embedding_bag")
OLD_DATE = "2025-01-01T00:00:00+00:00"


@dataclasses.dataclass
class Golden:
    root: Path
    h100: list[str]  # keys of the shipped H100 copies
    old: str  # an H100 copy re-dated to OLD_DATE
    cpu: str  # the real CPU search
    broken: str  # a CPU entry whose kernel writes the wrong place (checksum valid)
    flipped: str  # an H100 copy with one bit flipped on disk


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(b'"speedup": ') + len(b'"speedup": ')
    data[at] ^= 0x01  # '2' -> '3': still valid JSON, checksum no longer matches
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Golden:
    root = tmp_path_factory.mktemp("golden") / "store"
    shutil.copytree(SHIPPED / "v1", root / "v1")
    store = KernelStore(root)
    h100 = sorted(e.key for e in store.entries())
    assert len(h100) >= 3, "kernel_cache/ should hold real H100 entries"
    old = store.get_by_key(h100[0])
    old.meta["date"] = OLD_DATE
    assert store.put(old)
    spec = FAM.spec_for(torch.randn(10, 4), torch.tensor([1, 2, 3]), torch.tensor([0, 1]))
    entry, _ = search_spec(FAM, spec, Settings(max_candidates=2, seeds=1), timer=lambda fn: 1.0)
    assert entry is not None and store.put(entry)
    spec2 = FAM.spec_for(torch.randn(12, 5), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2]))
    good = FAM.candidates(spec2)[0]
    # A kernel that runs but is slightly wrong: only re-running it against the reference can tell.
    bad = dataclasses.replace(good, source=good.source.replace("acc.to(out_ptr.dtype", "(acc + 0.5).to(out_ptr.dtype", 1))
    assert bad.source != good.source
    broken = Entry(spec2, bad, {**entry.meta, "search": {"strategy": "test", "trials": []}})
    assert store.put(broken)
    flipped = h100[-1]
    _flip_bit(store.path_for(flipped))
    return Golden(root, h100, old.key, entry.key, broken.key, flipped)


@pytest.fixture
def store_copy(golden, tmp_path) -> Path:
    d = tmp_path / "store"
    shutil.copytree(golden.root, d)
    return d


def _bytes(store: KernelStore, key: str, layer: str = "user") -> bytes:
    return store.path_for(key, layer).read_bytes()


# -- ls / show / stats ---------------------------------------------------------------------------
def test_ls_filters(golden):
    store = KernelStore(golden.root)
    rows = ct.list_rows(store)
    assert {r.key for r in rows} == set(golden.h100) - {golden.flipped} | {golden.cpu, golden.broken}
    assert {r.key for r in ct.list_rows(store, ct.Filter(device="cpu"))} == {golden.cpu, golden.broken}
    assert {r.key for r in ct.list_rows(store, ct.Filter(device="H100"))} == set(golden.h100) - {golden.flipped}
    assert [r.key for r in ct.list_rows(store, ct.Filter(before=ct.parse_date("2026-01-01")))] == [golden.old]
    assert golden.old not in {r.key for r in ct.list_rows(store, ct.Filter(since=ct.parse_date("2026-01-01")))}
    shipped = {e.key: e for e in KernelStore(SHIPPED).entries()}
    fast = {k for k, e in shipped.items() if e.meta["speedup"] >= 2.5} - {golden.flipped}
    assert {r.key for r in ct.list_rows(store, ct.Filter(min_speedup=2.5))} == fast
    assert {r.key for r in ct.list_rows(store, ct.Filter(op="forward_only"))} == {
        k for k, e in shipped.items() if "forward_only" in e.spec.op} - {golden.flipped}
    table = ct.format_rows(rows)
    head = table.splitlines()[0].split()
    assert head == ["family", "op", "shapes", "device", "speedup", "%", "floor", "date", "key"]
    old = next(r for r in rows if r.key == golden.old)
    line = next(ln for ln in table.splitlines() if old.short_key in ln)
    assert "f32[" in line and "H100 80GB HBM3" in line and f"{old.speedup:.2f}x" in line and "2025-01-01" in line
    with pytest.raises(ct.CacheToolError, match="not a date"):
        ct.parse_date("last tuesday")


def test_show_prefix_ambiguity_and_story(golden):
    store = KernelStore(golden.root)
    e = ct.resolve_key(store, golden.cpu.split("/")[2][:10])
    assert e.key == golden.cpu
    assert ct.resolve_key(store, golden.cpu).key == golden.cpu
    assert ct.resolve_key(store, "/".join(golden.old.split("/")[:2])).key == golden.old  # family/loose prefix
    with pytest.raises(ct.CacheToolError, match="ambiguous"):
        ct.resolve_key(store, "embedding_bag/")
    with pytest.raises(ct.CacheToolError, match="no entry matches"):
        ct.resolve_key(store, "zzzz")
    text = ct.format_show(e)
    assert "# how the search found it" in text and "strategy mcts" in text and "evaluation" in text
    assert "--tree" in text and "@triton.jit" in text and "# metadata" in text
    h = ct.format_show(ct.resolve_key(store, golden.old))
    assert "strategy exhaustive" in h or "strategy mcts" in h  # shipped entries come from both
    assert "speedup" in h and "% of floor" in h and "NVIDIA H100" in h
    pts = ct.search_points(ct.resolve_key(store, golden.old).meta)
    curve = ct.best_so_far(pts)
    assert curve and all(b >= a for (_, a), (_, b) in zip(curve[1:], curve))  # non-increasing best time


def test_stats(golden):
    st = ct.compute_stats(KernelStore(golden.root))
    valid_h100 = [k for k in golden.h100 if k != golden.flipped]
    assert st.entries == len(valid_h100) + 2 and st.invalid == 1
    want = collections.Counter(k.split("/")[0] for k in valid_h100)
    want["embedding_bag"] += 2  # the two CPU entries
    assert st.by_family == dict(want)
    assert st.by_device == {"NVIDIA H100 80GB HBM3": len(valid_h100), "cpu": 2}
    sp = [KernelStore(SHIPPED).get_by_key(k).meta["speedup"] for k in valid_h100]
    d = st.speedup["NVIDIA H100 80GB HBM3"]
    assert (d.n, d.min, d.median, d.max) == (len(sp), min(sp), statistics.median(sp), max(sp))
    assert st.pct_of_floor["cpu"].n == 0  # no floor under the interpreter
    assert st.search_s > 0 and st.search_s_known >= len(valid_h100)
    text = ct.format_stats(st)
    assert "1 invalid file" in text and "torch 2.11.0" in text and "median" in text


# -- verify --------------------------------------------------------------------------------------
def test_verify_marks_failures_and_never_rewrites_corrupt_or_shipped(store_copy, golden, tmp_path, capsys):
    store = KernelStore(store_copy)
    before = {k: _bytes(store, k) for k in (golden.cpu, golden.flipped)}
    # A stale failure mark on the good entry: a passing verify must clear it.
    assert store.update_meta(golden.cpu, {"verify": {"ok": False, "date": OLD_DATE, "diag": "old"}})
    marked_cpu = _bytes(store, golden.cpu)
    res = {r.key: r for r in ct.verify_store(store, executor="inprocess", seeds=1, progress=True)}
    assert "verify" in capsys.readouterr().err  # the progress bar
    assert res[golden.flipped].status == "corrupt" and "checksum" in res[golden.flipped].detail
    assert _bytes(store, golden.flipped) == before[golden.flipped], "a corrupt file is reported, never rewritten"
    for k in golden.h100:
        if k != golden.flipped:
            assert res[k].status == "skipped" and "other device" in res[k].detail
    assert res[golden.broken].status == "failed" and res[golden.broken].marked
    v = store.get_by_key(golden.broken).meta["verify"]  # read back through the checksum check
    assert v["ok"] is False and v["date"] and v["device"] == "cpu"
    assert v["diag"].startswith("verify failed") and "Error" not in v["diag"], v["diag"]  # wrong values, no crash
    assert res[golden.cpu].status == "ok" and res[golden.cpu].marked
    assert store.get_by_key(golden.cpu).meta["verify"]["ok"] is True
    assert _bytes(store, golden.cpu) != marked_cpu
    # An entry that passes with no earlier mark is not rewritten (no churn in the store's generation).
    gen = store.generation()
    again = {r.key: r for r in ct.verify_store(store, ct.Filter(device="cpu"), executor="inprocess", seeds=1)}
    assert again[golden.cpu].status == "ok" and not again[golden.cpu].marked
    assert again[golden.broken].status == "failed"
    assert store.generation() != gen  # only the broken one was re-marked (new date)
    text = ct.format_verify(list(res.values()))
    assert "FAILED" in text and "CORRUPT" in text and "1 ok, 1 failed, 1 corrupt" in text

    # The shipped layer: reported, never marked.
    shipped = tmp_path / "shipped"
    (shipped / "v1").mkdir(parents=True)
    src = KernelStore(golden.root).path_for(golden.broken)
    dst = KernelStore(shipped).path_for(golden.broken)
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    layered = KernelStore(tmp_path / "empty user", shipped)
    (r,) = ct.verify_store(layered, executor="inprocess", seeds=1)
    assert r.status == "failed" and r.layer == "shipped" and not r.marked and "reported only" in r.detail
    assert dst.read_bytes() == src.read_bytes()
    assert not (tmp_path / "empty user").exists()


def test_verify_through_the_local_pool(golden):
    """The default executor: an isolated worker process under the interpreter."""
    res = ct.verify_store(KernelStore(golden.root), ct.Filter(device="cpu"), executor="local", seeds=1, mark=False)
    assert {r.key: r.status for r in res if r.status != "corrupt"} == {golden.cpu: "ok", golden.broken: "failed"}


# -- prune ---------------------------------------------------------------------------------------
def test_prune_dry_run_then_yes(store_copy, golden, tmp_path, monkeypatch):
    store = KernelStore(store_copy)
    assert store.update_meta(golden.broken, {"verify": {"ok": False, "date": OLD_DATE, "diag": "wrong"}})
    with pytest.raises(ct.CacheToolError, match="needs a criterion"):
        ct.prune(store, ct.PruneCriteria())
    old = ct.prune(store, ct.PruneCriteria(older_than_days=365))
    assert [it.key for it in old] == [golden.old] and not old[0].removed and old[0].path.exists()
    assert "would remove" in ct.format_prune(old, False) and "dry run" in ct.format_prune(old, False)
    # AND: old *and* on a cpu device -> nothing
    assert ct.prune(store, ct.PruneCriteria(older_than_days=365, device="cpu")) == []
    # versions other than the running ones: the H100 entries were searched with torch 2.11
    stale = {it.key for it in ct.prune(store, ct.PruneCriteria(other_versions=True))}
    assert stale == set(golden.h100) - {golden.flipped}
    failed = {it.key: it for it in ct.prune(store, ct.PruneCriteria(failed_verify=True))}
    assert set(failed) == {golden.broken, golden.flipped} and "corrupt" in failed[golden.flipped].reasons[0]
    gone = ct.prune(store, ct.PruneCriteria(failed_verify=True), yes=True)
    assert all(it.removed for it in gone) and not any(it.path.exists() for it in gone)
    assert not store.path_for(golden.broken).parent.exists(), "empty loose dirs are removed"
    assert ct.prune(store, ct.PruneCriteria(failed_verify=True)) == []
    assert store.get_by_key(golden.cpu) is not None
    # The shipped layer is never touched, even when it matches (a copy: a bug must not eat the repo's).
    shipped = tmp_path / "kernel_cache"
    shutil.copytree(SHIPPED, shipped)
    layered = KernelStore(store_copy, shipped)
    shipped_before = {p: p.read_bytes() for p in shipped.rglob("*.json")}
    removed = ct.prune(layered, ct.PruneCriteria(device="cuda"), yes=True)
    assert removed and all(store_copy in it.path.parents for it in removed)
    assert {p: p.read_bytes() for p in shipped.rglob("*.json")} == shipped_before
    # `--dir` pointing at the shipped kernel_cache/ opens it read-only
    monkeypatch.setenv("KEVOLVE_SHIPPED_DIR", str(shipped))
    with pytest.raises(ct.CacheToolError, match="shipped kernel_cache"):
        ct.prune(ct.open_store(shipped), ct.PruneCriteria(device="cuda"), yes=True)
    assert {p: p.read_bytes() for p in shipped.rglob("*.json")} == shipped_before
    with pytest.raises(ct.CacheToolError, match="read-only"):
        ct.prune(KernelStore(tmp_path, readonly=True), ct.PruneCriteria(device="cpu"), yes=True)


# -- export / import -----------------------------------------------------------------------------
def test_export_import_roundtrip(store_copy, golden, tmp_path, capsys):
    src = KernelStore(store_copy)
    rep = ct.export_store(src, tmp_path / "out" / "team.tar.gz")
    valid = sorted(set(golden.h100) - {golden.flipped} | {golden.cpu, golden.broken})
    assert rep.keys == valid and [k for k, _ in rep.skipped] == [golden.flipped]
    with tarfile.open(rep.path) as tf:
        names = tf.getnames()
        man = json.loads(tf.extractfile(ct.MANIFEST).read())
    assert ct.MANIFEST in names and len(names) == len(valid) + 1
    assert set(man["entries"]) == set(valid) and man["kevolve_version"] and man["date"]
    dst = KernelStore(tmp_path / "dst")
    imp = ct.import_tarball(dst, rep.path, progress=True)
    assert "import" in capsys.readouterr().err
    assert sorted(imp.imported) == valid and not imp.refused and not imp.skipped
    for k in valid:
        assert _bytes(dst, k) == _bytes(src, k)
    again = ct.import_tarball(dst, rep.path)
    assert not again.imported and {why for _, why in again.skipped} == {"already there"}
    # a local entry with other content is kept unless --overwrite
    e = dst.get_by_key(golden.cpu)
    e.meta["speedup"] = 9.0
    assert dst.put(e)
    keep = ct.import_tarball(dst, rep.path)
    assert (golden.cpu, "exists with other content (--overwrite replaces it)") in keep.skipped
    assert dst.get_by_key(golden.cpu).meta["speedup"] == 9.0
    over = ct.import_tarball(dst, rep.path, overwrite=True)
    assert golden.cpu in over.imported and _bytes(dst, golden.cpu) == _bytes(src, golden.cpu)
    with pytest.raises(ct.CacheToolError, match="read-only"):
        ct.import_tarball(KernelStore(tmp_path / "ro", readonly=True), rep.path)


def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_import_refuses_bad_entries_and_path_traversal(store_copy, golden, tmp_path):
    src = KernelStore(store_copy)
    good = [golden.cpu, golden.old]
    files = {k: _bytes(src, k) for k in good}
    bitflip = bytearray(_bytes(src, golden.broken))
    bitflip[bitflip.index(b'"time_ms"') + 12] ^= 0x01
    # consistent with the manifest, but the entry's own checksum fails
    doc = json.loads(_bytes(src, golden.h100[1]))
    doc["meta"]["speedup"] = 99.0
    tampered = json.dumps(doc).encode()
    manifest = {k: {"sha256": ct._sha256(b), "checksum": json.loads(b)["checksum"]} for k, b in files.items()}
    manifest[golden.broken] = {"sha256": ct._sha256(_bytes(src, golden.broken)),
                               "checksum": json.loads(_bytes(src, golden.broken))["checksum"]}
    manifest[golden.h100[1]] = {"sha256": ct._sha256(tampered), "checksum": doc["checksum"]}
    evil = b'{"pwned": true}'
    tar = tmp_path / "bad.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        _member(tf, ct.MANIFEST, json.dumps({"format": ct.EXPORT_FORMAT, "entries": manifest}).encode())
        for k, b in files.items():
            _member(tf, f"v1/{k}.json", b)
        _member(tf, f"v1/{golden.broken}.json", bytes(bitflip))
        _member(tf, f"v1/{golden.h100[1]}.json", tampered)
        _member(tf, "../evil.json", evil)
        _member(tf, "v1/embedding_bag/../../../evil2.json", evil)
        _member(tf, "/tmp/kevolve_evil3.json", evil)
        link = tarfile.TarInfo(f"v1/{golden.h100[2]}.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    dst_root = tmp_path / "sub" / "dst"
    rep = ct.import_tarball(KernelStore(dst_root), tar)
    assert sorted(rep.imported) == sorted(good)
    refused = dict(rep.refused)
    assert "sha256 does not match" in refused[golden.broken]
    assert "checksum mismatch" in refused[golden.h100[1]]
    for name in ("../evil.json", "v1/embedding_bag/../../../evil2.json", "/tmp/kevolve_evil3.json"):
        assert "unsafe" in refused[name]
    assert "not a regular file" in refused[golden.h100[2]]
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "evil2.json").exists()
    assert not Path("/tmp/kevolve_evil3.json").exists()
    assert sorted(str(p.relative_to(dst_root)) for p in dst_root.rglob("*.json")) == sorted(f"v1/{k}.json" for k in good)
    assert "REFUSED" in ct.format_import(rep)
    # a tarball without a manifest is refused whole
    bare = tmp_path / "bare.tar.gz"
    with tarfile.open(bare, "w:gz") as tf:
        _member(tf, f"v1/{golden.cpu}.json", files[golden.cpu])
    with pytest.raises(ct.CacheToolError, match="MANIFEST"):
        ct.import_tarball(KernelStore(tmp_path / "x"), bare)


# -- diff ----------------------------------------------------------------------------------------
def test_diff(golden, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(golden.root, a)
    shutil.copytree(golden.root, b)
    sa, sb = KernelStore(a), KernelStore(b)
    assert sa.remove(golden.broken)  # only in B
    assert sb.remove(golden.old)  # only in A
    e = sb.get_by_key(golden.cpu)
    e.meta["speedup"] = 3.5
    assert sb.put(e)
    other = sb.get_by_key(golden.h100[1])
    sb.put(dataclasses.replace(other, candidate=dataclasses.replace(other.candidate, source=other.candidate.source + "\n# v2\n")))
    d = ct.diff_stores(sa, sb)
    assert d.only_a == [golden.old] and d.only_b == [golden.broken]
    assert set(d.changed) == {golden.cpu, golden.h100[1]}
    assert d.changed[golden.h100[1]] == ["source"]
    assert d.changed[golden.cpu] == ["speedup 1.000x -> 3.500x"]
    assert d.same == len(golden.h100) - 3 and not d.identical  # flipped is invalid: in neither view
    text = ct.format_diff(d, "a", "b")
    assert f"only in a: {golden.old}" in text and "1 only in a, 1 only in b, 2 different" in text
    assert ct.diff_stores(sa, KernelStore(a)).identical


# -- report --------------------------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _screenshot(html_path: Path, png: Path, width: int = 1280, height: int = 2600) -> None:
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH: `make venv` installs Debian's chromium")
        pytest.skip("no chromium on PATH (`make venv` installs it where apt-get exists)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
             html_path.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )


def _pixels_near(img, rgb: str, tol: int = 10) -> int:
    import numpy as np

    target = np.array([int(rgb[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img.astype(int) - target).max(axis=2) <= tol).sum())


def test_report_renders_in_headless_chromium(golden, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image
    import numpy as np

    out = ct.write_report(KernelStore(golden.root), tmp_path / "report.html")
    text = out.read_text("utf-8")
    assert text.count("src='data:image/svg+xml;base64,") == 3
    assert "http://" not in text and "https://" not in text, "self-contained: no network"
    assert text.count("<tr>") + text.count("<tr class") == 1 + len(golden.h100) - 1 + 2  # header + valid entries
    assert "1 invalid file" in text
    png = tmp_path / "report.png"
    # the two bar plots grow with the shipped entries and the search curves come after them: a window
    # of 2600 px cut the curves off at 38 entries
    height = 2600 + 50 * len(golden.h100)
    _screenshot(out, png, height=height)
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[:2] == (height, 1280)
    non_white = (img.min(axis=2) < 235).mean()
    assert 0.03 < non_white < 0.9, f"page looks blank or broken ({non_white:.3f} non-white)"
    # The browser decoded the plots: their bar colours are on screen.
    assert _pixels_near(img, ct.GPU_COLOR) > 5000, "speedup bars not rendered"
    assert _pixels_near(img, ct.FLOOR_COLOR) > 5000, "floor bars not rendered"
    assert _pixels_near(img, "#d62728", 30) > 300, "search curves not rendered"
    shutil.copy(png, Path(tempfile.gettempdir()) / "kevolve_report_test.png")  # for a human to look at


def test_report_without_matplotlib_is_a_clear_error(golden, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ct.CacheToolError, match=r"pip install 'torch_kevolve\[report\]'"):
        ct.write_report(KernelStore(golden.root), tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_update_meta_refuses_a_changed_entry(store_copy, golden):
    store = KernelStore(store_copy)
    e = store.get_by_key(golden.cpu)
    assert not store.update_meta(golden.cpu, {"verify": {"ok": False}}, expect_checksum="0" * 64)
    assert store.get_by_key(golden.cpu).meta.get("verify") is None
    assert store.update_meta(golden.cpu, {"note": 1}, expect_checksum=e.checksum)
    got = store.get_by_key(golden.cpu)
    assert got.meta["note"] == 1 and got.checksum == _checksum(json.loads(_bytes(store, golden.cpu)))
    assert not store.update_meta(golden.flipped, {"note": 1}), "a corrupt file is not blessed"
