"""The on-disk kernel store: keys, layers, corruption handling, unwritable stores, concurrency, claim().

No Triton kernel is compiled here: specs are built from signatures and candidates are dummy sources.
"""
from __future__ import annotations

import errno
import json
import logging
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import pytest

from torch_kevolve.families.base import Candidate
from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig
from torch_kevolve.store import Entry, KernelStore, _checksum

CPU = DeviceSig("cpu", "cpu", "interpreter")
GPU = DeviceSig("cuda", "NVIDIA H100 80GB HBM3", "sm_90")
VERSIONS = (("template", "1"), ("torch", "2.13.0"), ("triton", "3.6.0"))
MP = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _contig(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


def make_spec(dtype: str = "float32", shape: tuple[int, ...] = (64, 16), mode: int = 0,
              device: DeviceSig = CPU, versions: tuple = VERSIONS, n: int = 0) -> OpSpec:
    args = (TensorSig(dtype, shape, _contig(shape)), TensorSig("int64", (32 + n,), (1,)), None)
    return OpSpec("embedding_bag", "aten._embedding_bag.default", args,
                  (("mode", mode), ("padding_idx", -1)), device, versions)


def make_entry(spec: OpSpec, tag: str = "a", pad: int = 0) -> Entry:
    src = f"@triton.jit\ndef kernel_{tag}(X, Y, N: tl.constexpr):\n    pass  # ü {tag}\n" + "#" * pad
    cand = Candidate(src, (("BLOCK", 128), ("num_warps", 4), ("shape", (1, 2))), "template", "rowwise")
    meta = {"time_ms": 0.125, "baseline_ms": 0.5, "speedup": 4.0, "tag": tag, "pad": pad,
            "evidence": {"seeds": 3, "max_abs_err": 1e-7}, "date": "2025-01-01T00:00:00+00:00"}
    return Entry(spec, cand, meta)


def entry_file(store: KernelStore, spec: OpSpec) -> Path:
    return store.root / "v1" / spec.family / spec.loose_key / f"{spec.strict_key}.json"


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and (p.name.startswith(".") or p.suffix == ".tmp")]


def store_warnings(caplog: Any, needle: str = "") -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "torch_kevolve" and r.levelno == logging.WARNING and needle in r.getMessage()]


# -- basics -----------------------------------------------------------------------------------------
def test_roundtrip(tmp_path: Path) -> None:
    store = KernelStore(tmp_path / "user", tmp_path / "shipped")
    spec = make_spec()
    e = make_entry(spec)
    assert store.get(spec) is None
    assert not (tmp_path / "user").exists(), "reads must not create directories"
    assert store.put(e)
    assert len(e.checksum) == 64
    got = store.get(spec)
    assert got is not None and got == e
    assert got.layer == "user" and got.key == spec.key == f"{spec.family}/{spec.loose_key}/{spec.strict_key}"
    assert got.candidate == e.candidate and hash(got.candidate) == hash(e.candidate)
    assert store.get_by_key(spec.key) == e
    doc = json.loads(entry_file(store, spec).read_text("utf-8"))
    assert doc["schema"] == 1 and doc["key"] == spec.key and doc["checksum"] == e.checksum
    assert OpSpec.from_json(doc["spec"]).key == spec.key
    assert [x.key for x in store.entries()] == [spec.key]
    assert leftovers(store.root) == []


def test_key_stability() -> None:
    a, b = make_spec(), make_spec()
    assert (a.key, a.loose_key, a.strict_key) == (b.key, b.loose_key, b.strict_key)
    for other in (make_spec(dtype="float16"), make_spec(shape=(64, 32)), make_spec(mode=1), make_spec(device=GPU)):
        assert other.loose_key != a.loose_key and other.strict_key != a.strict_key
    newer = make_spec(versions=(("template", "1"), ("torch", "2.14.0"), ("triton", "3.7.0")))
    assert newer.loose_key == a.loose_key and newer.strict_key != a.strict_key


def test_user_layer_overrides_shipped(tmp_path: Path) -> None:
    spec = make_spec()
    assert KernelStore(tmp_path / "shipped").put(make_entry(spec, "shipped"))
    store = KernelStore(tmp_path / "user", shipped=tmp_path / "shipped")
    assert store.get(spec).meta["tag"] == "shipped"
    assert store.put(make_entry(spec, "user"))
    got = store.get(spec)
    assert got.meta["tag"] == "user" and got.layer == "user"
    assert [e.meta["tag"] for e in store.entries()] == ["user"]  # effective view
    assert [e.meta["tag"] for e in store.entries("shipped")] == ["shipped"]
    assert KernelStore(tmp_path / "shipped").get(spec).meta["tag"] == "shipped", "shipped layer never written"
    assert store.remove(spec.key)
    assert store.get(spec).layer == "shipped"  # the shipped layer shows through again
    assert not store.remove(spec.key)  # and it can't be removed through the user store
    with pytest.raises(ValueError):
        list(store.entries("nope"))


def test_shipped_layer_is_read(tmp_path: Path) -> None:
    shipped = tmp_path / "kernel_cache"
    specs = [make_spec(n=i) for i in range(3)]
    writer = KernelStore(shipped)
    for i, s in enumerate(specs):
        assert writer.put(make_entry(s, f"s{i}"))
    store = KernelStore(tmp_path / "missing user dir", shipped=shipped)
    for i, s in enumerate(specs):
        e = store.get(s)
        assert e is not None and e.layer == "shipped" and e.meta["tag"] == f"s{i}"
        assert store.get_by_key(s.key) == e
    assert sorted(e.key for e in store.entries()) == sorted(s.key for s in specs)
    assert list(store.entries("user")) == []
    assert not (tmp_path / "missing user dir").exists()
    assert not (shipped / "locks").exists()


def test_loose_matches(tmp_path: Path) -> None:
    old = make_spec(versions=(("template", "1"), ("torch", "2.12.0"), ("triton", "3.5.0")))
    older = make_spec(versions=(("template", "0"), ("torch", "2.11.0"), ("triton", "3.5.0")))
    new = make_spec()
    KernelStore(tmp_path / "shipped").put(make_entry(older, "older"))
    store = KernelStore(tmp_path / "user", tmp_path / "shipped")
    store.put(make_entry(old, "old"))
    store.put(make_entry(make_spec(dtype="float16"), "other"))
    assert store.get(new) is None
    found = store.loose_matches(new)
    assert sorted(e.meta["tag"] for e in found) == ["old", "older"]
    assert {e.layer for e in found} == {"user", "shipped"}
    assert all(e.spec.loose_key == new.loose_key for e in found)
    assert store.loose_matches(make_spec(mode=1)) == []


def test_bad_keys_are_misses(tmp_path: Path) -> None:
    store = KernelStore(tmp_path / "u")
    store.put(make_entry(make_spec()))
    for key in ("../../etc/passwd", "a/b", "x/../y/z", "fam/abc/../../..", "fam/ABC/def", "", "/abs/ab/cd"):
        assert store.get_by_key(key) is None
        assert store.remove(key) is False
    assert len(list(store.entries())) == 1


def test_unserializable_meta_is_refused(tmp_path: Path, caplog: Any) -> None:
    store = KernelStore(tmp_path / "u")
    e = make_entry(make_spec())
    e.meta["self"] = e.meta  # circular
    assert store.put(e) is False
    assert store.get(e.spec) is None and leftovers(store.root) == []
    assert store_warnings(caplog, "serialize")
    e2 = make_entry(make_spec(n=1))
    e2.meta[3] = object()  # non-str key, non-JSON value: stored as strings
    assert store.put(e2) and store.get(e2.spec).meta["3"].startswith("<object")


# -- corruption ------------------------------------------------------------------------------------
def _flip_in_source(raw: bytes) -> bytes:
    i = raw.index(b"def kernel_") + 4
    return raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1:]


def _rewrite(raw: bytes, fix_checksum: bool = True, **changes: Any) -> bytes:
    doc = json.loads(raw)
    doc.update(changes)
    if fix_checksum:
        doc["checksum"] = _checksum(doc)
    return json.dumps(doc).encode()


CORRUPTIONS = {
    "truncated": lambda raw: raw[: len(raw) // 2],
    "empty": lambda raw: b"",
    "bitflip_in_source": _flip_in_source,
    "wrong_checksum": lambda raw: _rewrite(raw, False, checksum="0" * 64),
    "missing_checksum": lambda raw: json.dumps({k: v for k, v in json.loads(raw).items() if k != "checksum"}).encode(),
    "garbage": lambda raw: b"\x00\xff\xfe not json at all {{{",
    "not_an_object": lambda raw: b"[1, 2, 3]",
    "older_schema": lambda raw: _rewrite(raw, schema=0),
    "newer_schema": lambda raw: _rewrite(raw, schema=2),
    "key_mismatch": lambda raw: _rewrite(raw, key="embedding_bag/" + "0" * 32 + "/" + "1" * 32),
    "spec_mismatch": lambda raw: _rewrite(raw, spec={**json.loads(raw)["spec"], "op": "aten.other.default"}),
    "malformed_candidate": lambda raw: _rewrite(raw, candidate={"source": 3}),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_entry_is_a_miss_with_one_warning(tmp_path: Path, caplog: Any, kind: str) -> None:
    store = KernelStore(tmp_path / f"store {kind}", tmp_path / "shipped")
    spec, good = make_spec(), make_spec(n=1)
    assert store.put(make_entry(spec)) and store.put(make_entry(good, "good"))
    path = entry_file(store, spec)
    path.write_bytes(CORRUPTIONS[kind](path.read_bytes()))
    caplog.set_level(logging.WARNING, logger="torch_kevolve")
    for _ in range(3):
        assert store.get(spec) is None
        assert store.get_by_key(spec.key) is None
        assert [e.key for e in store.entries()] == [good.key]
        assert store.loose_matches(spec) == []  # `good` has another loose key (index shape)
    msgs = store_warnings(caplog, str(path))
    assert len(msgs) == 1, msgs
    assert "skipping" in msgs[0]
    assert len(store_warnings(caplog)) == 1
    assert path.exists(), "never deleted silently"
    assert store.get(good).meta["tag"] == "good"


def test_entry_moved_to_another_keys_path(tmp_path: Path, caplog: Any) -> None:
    store = KernelStore(tmp_path / "u")
    a, b = make_spec(), make_spec(n=1)
    store.put(make_entry(a))
    dst = entry_file(store, b)
    dst.parent.mkdir(parents=True)
    dst.write_bytes(entry_file(store, a).read_bytes())
    assert store.get(b) is None and store.get(b) is None
    assert len(store_warnings(caplog, str(dst))) == 1
    assert store.get(a) is not None


def test_corrupt_user_entry_falls_back_to_shipped(tmp_path: Path, caplog: Any) -> None:
    spec = make_spec()
    KernelStore(tmp_path / "shipped").put(make_entry(spec, "shipped"))
    store = KernelStore(tmp_path / "user", tmp_path / "shipped")
    store.put(make_entry(spec, "user"))
    entry_file(store, spec).write_bytes(b"{")
    assert store.get(spec).meta["tag"] == "shipped"
    assert len(store_warnings(caplog)) == 1


# -- generation ------------------------------------------------------------------------------------
def test_generation(tmp_path: Path) -> None:
    store = KernelStore(tmp_path / "user", tmp_path / "shipped")
    g0 = store.generation()
    assert g0 == store.generation() == KernelStore(tmp_path / "user", tmp_path / "shipped").generation()
    assert not (tmp_path / "user").exists()
    a, b = make_spec(), make_spec(n=1)
    assert store.put(make_entry(a))
    g1 = store.generation()
    assert g1 != g0 and g1 == store.generation()
    assert store.put(make_entry(a))  # identical bytes, replaced: still a new generation
    g2 = store.generation()
    assert g2 not in (g0, g1)
    assert store.put(make_entry(b))
    g3 = store.generation()
    assert g3 not in (g0, g1, g2)
    assert KernelStore(tmp_path / "shipped").put(make_entry(make_spec(n=2)))  # shipped layer counts too
    g4 = store.generation()
    assert g4 not in (g0, g1, g2, g3)
    assert store.remove(b.key)
    assert store.generation() not in (g0, g1, g2, g3, g4)
    store.remove(a.key)
    KernelStore(tmp_path / "shipped").remove(make_spec(n=2).key)
    assert store.generation() == g0  # same (empty) contents, same fingerprint


# -- unwritable stores -----------------------------------------------------------------------------
def test_readonly_store_reads_but_does_not_write(tmp_path: Path, caplog: Any) -> None:
    root = tmp_path / "ro"
    spec, new = make_spec(), make_spec(n=1)
    assert KernelStore(root).put(make_entry(spec))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    ro = KernelStore(root, readonly=True)
    assert ro.get(spec) is not None
    assert ro.put(make_entry(new)) is False
    assert ro.put(make_entry(new)) is False
    assert ro.remove(spec.key) is False
    with ro.claim(new, 0.1) as got:
        assert got  # no lock to take: proceed, the result just stays in this process
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert len(store_warnings(caplog, "cannot write")) == 1


def test_chmod_readonly_root(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    spec = make_spec()
    assert KernelStore(root).put(make_entry(spec))
    for d in (root, root / "v1", root / "v1" / spec.family, entry_file(KernelStore(root), spec).parent):
        os.chmod(d, 0o555)
    try:
        try:
            (root / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("permissions don't bite here (root); covered by the readonly/monkeypatch tests")
        store = KernelStore(root)
        assert store.get(spec) is not None
        assert store.put(make_entry(make_spec(n=1))) is False
        assert store.put(make_entry(spec, "b")) is False
        assert store.get(spec).meta["tag"] == "a"
        with store.claim(spec, 0.1) as got:
            assert got  # no lock can be made: proceed unlocked (nothing could be shared anyway)
    finally:
        for d in root.rglob("*"):
            if d.is_dir():
                os.chmod(d, 0o755)
        os.chmod(root, 0o755)


def _failing(real: Any, exc: OSError, only_tmp: bool = True) -> Any:
    def f(*args: Any, **kw: Any) -> Any:
        if not only_tmp or any(".tmp" in str(a) for a in args[:2]):
            raise exc
        return real(*args, **kw)
    return f


FAILURES = {
    "replace_eperm": ("replace", PermissionError(errno.EACCES, "Permission denied")),
    "replace_erofs": ("replace", OSError(errno.EROFS, "Read-only file system")),
    "open_eperm": ("open", PermissionError(errno.EACCES, "Permission denied")),
    "open_enospc": ("open", OSError(errno.ENOSPC, "No space left on device")),
    "fsync_enospc": ("fsync", OSError(errno.ENOSPC, "No space left on device")),
    "mkdir_eperm": ("mkdir", PermissionError(errno.EACCES, "Permission denied")),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_put_failures_return_false_and_leave_nothing(tmp_path: Path, caplog: Any, monkeypatch: Any, kind: str) -> None:
    root = tmp_path / f"store {kind}"
    store = KernelStore(root)
    old, new = make_spec(), make_spec(n=1)
    assert store.put(make_entry(old, "old"))
    name, exc = FAILURES[kind]
    if name == "mkdir":
        monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: (_ for _ in ()).throw(exc))
    else:
        monkeypatch.setattr(os, name, _failing(getattr(os, name), exc, only_tmp=name != "fsync"))
    caplog.set_level(logging.WARNING, logger="torch_kevolve")
    assert store.put(make_entry(new)) is False  # a new key
    assert store.put(make_entry(old, "replacement")) is False  # replacing an existing one
    monkeypatch.undo()
    assert leftovers(root) == []
    assert store.get(new) is None
    assert store.get(old).meta["tag"] == "old"
    msgs = store_warnings(caplog, "cannot write")
    assert len(msgs) == 1 and str(root) in msgs[0], msgs
    if "enospc" in kind:
        assert "no space left" in msgs[0]
    assert store.put(make_entry(new))  # works again once the disk is back


# -- concurrency -----------------------------------------------------------------------------------
N_KEYS, N_WRITERS, N_ITERS = 4, 8, 15


def _writer(root: str, w: int) -> None:
    store = KernelStore(Path(root))
    for i in range(N_ITERS):
        for k in range(N_KEYS):
            tag = f"w{w}i{i}"
            if not store.put(make_entry(make_spec(n=(k + w + i) % N_KEYS), tag, pad=(w * 997 + i * 131) % 4000)):
                os._exit(3)
    os._exit(0)


def _reader(root: str, stop: Any, hits: Any) -> None:
    bad: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            bad.append(record.getMessage())

    logging.getLogger("torch_kevolve").addHandler(Catch(logging.WARNING))
    store = KernelStore(Path(root))
    specs = [make_spec(n=k) for k in range(N_KEYS)]
    n = 0
    while not stop.is_set() or n == 0:
        for s in specs:
            e = store.get(s)
            if e is None:
                continue
            ok = (isinstance(e, Entry) and e.spec == s and e.candidate.source == make_entry(s, e.meta["tag"], e.meta["pad"]).candidate.source)
            if not ok:
                os._exit(4)
            n += 1
        if bad:
            os._exit(5)
    with hits.get_lock():
        hits.value += n
    os._exit(0)


def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    root = tmp_path / "shared store"
    stop, hits = MP.Event(), MP.Value("i", 0)
    readers = [MP.Process(target=_reader, args=(str(root), stop, hits)) for _ in range(2)]
    writers = [MP.Process(target=_writer, args=(str(root), w)) for w in range(N_WRITERS)]
    for p in readers + writers:
        p.start()
    for p in writers:
        p.join(60)
    stop.set()
    for p in readers:
        p.join(60)
    assert [p.exitcode for p in writers] == [0] * N_WRITERS
    assert [p.exitcode for p in readers] == [0, 0]
    assert hits.value > 0
    store = KernelStore(root)
    final = list(store.entries())
    assert sorted(e.key for e in final) == sorted(make_spec(n=k).key for k in range(N_KEYS))
    assert leftovers(root) == []


def _claimant(root: str, barrier: Any, searched: Any, found: Any) -> None:
    store = KernelStore(Path(root))
    spec = make_spec()
    barrier.wait(10)
    if store.get(spec) is None:
        with store.claim(spec, 20) as got:
            if not got:
                os._exit(2)
            if store.get(spec) is not None:  # the other process stored it while we waited
                with found.get_lock():
                    found.value += 1
            else:
                with searched.get_lock():
                    searched.value += 1
                time.sleep(0.3)  # "search"
                if not store.put(make_entry(spec, f"pid{os.getpid()}")):
                    os._exit(3)
    else:
        with found.get_lock():
            found.value += 1
    os._exit(0)


def test_claim_race_searches_once(tmp_path: Path) -> None:
    root = tmp_path / "race"
    barrier, searched, found = MP.Barrier(2), MP.Value("i", 0), MP.Value("i", 0)
    procs = [MP.Process(target=_claimant, args=(str(root), barrier, searched, found)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (searched.value, found.value) == (1, 1)
    assert KernelStore(root).get(make_spec()) is not None
    assert (root / "locks" / f"{make_spec().strict_key}.lock").exists()


def _holder(root: str, held: Any, release: Any) -> None:
    with KernelStore(Path(root)).claim(make_spec(), 5) as got:
        if not got:
            os._exit(2)
        held.set()
        release.wait(20)
    os._exit(0)


def test_claim_timeout(tmp_path: Path) -> None:
    root = tmp_path / "locked store"
    store = KernelStore(root)
    spec, other = make_spec(), make_spec(n=1)
    held, release = MP.Event(), MP.Event()
    p = MP.Process(target=_holder, args=(str(root), held, release))
    p.start()
    try:
        assert held.wait(20)
        t0 = time.monotonic()
        with store.claim(spec, 0.3) as got:
            assert got is False
        assert time.monotonic() - t0 >= 0.25
        with store.claim(other, 0.3) as got:  # other keys are independent
            assert got is True
    finally:
        release.set()
        p.join(20)
    assert p.exitcode == 0
    with store.claim(spec, 5) as got:
        assert got is True
    with store.claim(spec, 0) as got:  # released on exit, even with timeout 0
        assert got is True


def test_claim_releases_on_exception(tmp_path: Path) -> None:
    store = KernelStore(tmp_path / "s")
    with pytest.raises(RuntimeError):
        with store.claim(make_spec(), 1) as got:
            assert got
            raise RuntimeError("search blew up")
    with store.claim(make_spec(), 0) as got:
        assert got


# -- paths -----------------------------------------------------------------------------------------
def test_path_with_spaces_and_unicode(tmp_path: Path) -> None:
    root = tmp_path / "kevolve store ü" / "ñ"
    shipped = tmp_path / "shipped kernels é"
    spec, s2 = make_spec(), make_spec(n=1)
    assert KernelStore(shipped).put(make_entry(s2, "shipped"))
    store = KernelStore(root, shipped)
    g0 = store.generation()
    assert store.put(make_entry(spec))
    assert store.get(spec).meta["tag"] == "a" and "ü" in store.get(spec).candidate.source
    assert store.get(s2).layer == "shipped"
    assert sorted(e.key for e in store.entries()) == sorted([spec.key, s2.key])
    assert store.generation() != g0
    with store.claim(spec, 1) as got:
        assert got
    assert store.remove(spec.key) and store.get(spec) is None
    assert entry_file(store, spec).parent.is_dir() and str(root) in str(entry_file(store, spec))


def test_from_settings(tmp_path: Path) -> None:
    from torch_kevolve.config import Settings

    s = Settings(cache_dir=tmp_path / "c", shipped_dir=tmp_path / "s")
    store = KernelStore.from_settings(s)
    assert store.root == tmp_path / "c" and store.shipped == tmp_path / "s" and not store.readonly
    assert KernelStore(tmp_path / "same", tmp_path / "same").shipped is None
