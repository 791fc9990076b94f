"""The kernel store under chaos (issue 10, parts 1-2): many processes at once, kill -9 mid-write,
1000+ corrupted files, odd versions, a full disk, a shared (group/other-writable) store.

No kernel is compiled: entries are the dummy specs/candidates of tests/test_store.py. Each chaos test
prints a ``CHAOS {...}`` line with its figures (``pytest -s`` shows them); RELIABILITY.md quotes them.
Children are forked (as in test_store.py): a spawned child re-imports torch (~5 s each here).
"""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import random
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from test_store import MP, entry_file, leftovers, make_entry, make_spec, store_warnings
from torch_kevolve import store as store_mod
from torch_kevolve.config import Settings
from torch_kevolve.spec import OpSpec
from torch_kevolve.store import Entry, KernelStore, _canon

ODD_ROOT = "chaos store ü ñ"  # every chaos store lives on a path with spaces and unicode


def _figures(name: str, **kw: Any) -> None:
    print(f"CHAOS {json.dumps({'test': name, **kw}, sort_keys=True)}")


def _valid(e: Entry | None, spec: OpSpec) -> bool:
    """A loaded entry is what some writer wrote for ``spec``: spec, source and meta all consistent."""
    if e is None:
        return True
    tag, pad = e.meta.get("tag"), e.meta.get("pad")
    return (isinstance(e, Entry) and e.spec == spec and isinstance(tag, str) and isinstance(pad, int)
            and e.candidate == make_entry(spec, tag, pad).candidate and len(e.checksum) == 64)


# -- 1. N processes writing and reading one store ------------------------------------------------------
N_PROCS, N_OWN, N_REWRITES, N_SHARED = 10, 6, 8, 4


def _own_spec(w: int, u: int) -> OpSpec:
    return make_spec(n=100 + w * N_OWN + u)


def _worker(root: str, w: int, out: str, barrier: Any) -> None:
    """Prewarm-like: claim+search+store the shared keys once across all processes, rewrite its own
    keys, and read every key of every process in between, checking each loaded entry."""
    code = 1
    try:
        warned: list[str] = []

        class Catch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                warned.append(record.getMessage())

        logging.getLogger("torch_kevolve").addHandler(Catch(logging.WARNING))
        store = KernelStore(Path(root))
        rng = random.Random(w)
        every = [make_spec(n=k) for k in range(N_SHARED)] + [_own_spec(x, u) for x in range(N_PROCS) for u in range(N_OWN)]
        reads = hits = torn = 0
        finished: dict[str, str] = {}
        searched: list[str] = []

        def read_some(n: int) -> None:
            nonlocal reads, hits, torn
            for s in rng.sample(every, n):
                e = store.get(s)
                reads += 1
                hits += e is not None
                torn += not _valid(e, s)

        barrier.wait(30)
        for r in range(N_REWRITES):
            for u in range(N_OWN):
                s = _own_spec(w, u)
                tag = f"w{w}r{r}"
                if not store.put(make_entry(s, tag, pad=rng.randrange(6000))):
                    os._exit(3)
                finished[s.key] = tag
                read_some(6)
            for k in range(N_SHARED):  # the compile path: get, claim, re-check, search once, put
                s = make_spec(n=k)
                if store.get(s) is None:
                    with store.claim(s, 30) as got:
                        if not got:
                            os._exit(2)
                        if store.get(s) is None:
                            searched.append(s.key)
                            time.sleep(0.02)  # "search"
                            if not store.put(make_entry(s, f"w{w}", pad=k)):
                                os._exit(3)
                read_some(2)
        Path(out).write_text(json.dumps({"finished": finished, "searched": searched, "reads": reads,
                                         "hits": hits, "torn": torn, "warnings": warned}))
        code = 0
    finally:
        os._exit(code)


def test_many_processes_write_and_read_one_store(tmp_path: Path) -> None:
    root = tmp_path / ODD_ROOT
    barrier = MP.Barrier(N_PROCS)
    outs = [tmp_path / f"w{w}.json" for w in range(N_PROCS)]
    t0 = time.monotonic()
    procs = [MP.Process(target=_worker, args=(str(root), w, str(outs[w]), barrier)) for w in range(N_PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    wall = time.monotonic() - t0
    assert [p.exitcode for p in procs] == [0] * N_PROCS
    res = [json.loads(o.read_text()) for o in outs]
    assert sum(r["torn"] for r in res) == 0
    assert [w for r in res for w in r["warnings"]] == []
    store = KernelStore(root)
    # every finished write is there, intact, with its writer's last content
    finished = {k: v for r in res for k, v in r["finished"].items()}
    assert len(finished) == N_PROCS * N_OWN
    lost = 0
    for k, tag in finished.items():
        e = store.get_by_key(k)
        lost += e is None or not _valid(e, e.spec) or e.meta["tag"] != tag
    assert lost == 0
    # each shared key searched exactly once across all processes, and stored
    searched = [k for r in res for k in r["searched"]]
    assert sorted(searched) == sorted(make_spec(n=k).key for k in range(N_SHARED))
    # exactly once: one file per key, every file valid, no temp file left
    audit = list(store.audit())
    assert [c.problem for c in audit if c.problem] == []
    keys = [c.key for c in audit]
    assert len(keys) == len(set(keys)) == N_PROCS * N_OWN + N_SHARED
    assert sorted(e.key for e in store.entries()) == sorted(keys)
    assert leftovers(root) == []
    _figures("processes", processes=N_PROCS, writes=sum(len(r["finished"]) for r in res) * N_REWRITES + len(searched),
             reads=sum(r["reads"] for r in res), read_hits=sum(r["hits"] for r in res), torn=0, lost=lost,
             duplicate_searches=len(searched) - N_SHARED, wall_s=round(wall, 2))


# -- 2. kill -9 at random points of writes -------------------------------------------------------------
N_KILLS, KILL_KEYS = 220, 3


def _put_loop(root: Path, trial: int, wfd: int, specs: list[OpSpec]) -> None:
    store = KernelStore(root)
    rng = random.Random(trial)
    i = 0
    while True:
        s = specs[i % len(specs)]
        if not store.put(make_entry(s, f"t{trial}i{i}", pad=rng.randrange(20000))):
            os._exit(3)
        os.write(wfd, f"{i}\n".encode())  # reported finished only once put has returned
        i += 1


def test_kill9_mid_write(tmp_path: Path) -> None:
    root = tmp_path / ODD_ROOT
    specs = [make_spec(n=k) for k in range(KILL_KEYS)]
    store = KernelStore(root)
    rng = random.Random(1234)
    finished = with_tmp = lost = torn = 0
    seen_tmp: set[Path] = set()
    t0 = time.monotonic()
    for trial in range(N_KILLS):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            try:
                os.close(r)
                _put_loop(root, trial, w, specs)
            finally:
                os._exit(1)
        os.close(w)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        with os.fdopen(r, "rb") as f:
            done = [int(x) for x in f.read().split()]
        finished += len(done)
        strays = set(root.rglob(".*.tmp"))
        with_tmp += bool(strays - seen_tmp)  # this kill left a temp file: it landed inside a write
        seen_tmp |= strays
        last = {}  # key -> index of its last write the child reported finished
        for i in done:
            last[specs[i % KILL_KEYS].key] = i
        for s in specs:
            e = store.get(s)
            if e is not None and not _valid(e, s):
                torn += 1
            if s.key in last:  # that write (or a later one of this trial) must be there, intact
                tag = e.meta["tag"] if e is not None else ""
                ok = tag.startswith(f"t{trial}i") and int(tag.split("i")[-1]) >= last[s.key]
                lost += not ok
        assert [c.problem for c in store.audit() if c.problem] == []
    wall = time.monotonic() - t0
    assert (torn, lost) == (0, 0)
    assert finished > 0 and with_tmp > 0, "no kill landed inside a write: the test proves nothing"
    # stray temp files never show as entries, and later reads/writes work around them
    strays = list(root.rglob(".*.tmp"))
    assert sorted(e.key for e in store.entries()) == sorted(s.key for s in specs)
    for s in specs:
        assert store.put(make_entry(s, "after")) and store.get(s).meta["tag"] == "after"
    # ... and once stale, the next write in their directory removes them
    old = time.time() - 2 * store_mod.STALE_TMP_S
    for p in root.rglob(".*.tmp"):
        os.utime(p, (old, old))
    for s in specs:
        assert store.put(make_entry(s, "sweep"))
    assert leftovers(root) == []
    _figures("kill9", trials=N_KILLS, finished_writes=finished, kills_mid_write=with_tmp, stray_tmp=len(strays),
             torn=torn, lost=lost, wall_s=round(wall, 2))


# -- 3. 1000+ truncated and bit-flipped files ----------------------------------------------------------
N_CORRUPT, N_INTACT = 1000, 200


def _mutate(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    if rng.random() < 0.5:
        return "truncated", raw[: rng.randrange(len(raw))]
    i, bit = rng.randrange(len(raw)), 1 << rng.randrange(8)
    return "bitflip", raw[:i] + bytes([raw[i] ^ bit]) + raw[i + 1:]


def _same_doc(a: bytes, b: bytes) -> bool:
    """A flip that leaves the same document (``1e-07`` → ``1E-07``) is no corruption at all."""
    try:
        return _canon(json.loads(a)) == _canon(json.loads(b))
    except (ValueError, UnicodeDecodeError):
        return False


def test_corrupted_files_detected_once_and_researched(tmp_path: Path, caplog: Any, monkeypatch: Any) -> None:
    root = tmp_path / ODD_ROOT
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # setup speed only: durability is not under test here
    store = KernelStore(root, tmp_path / "no shipped")
    specs = [make_spec(n=i) for i in range(N_CORRUPT + N_INTACT)]
    for i, s in enumerate(specs):
        assert store.put(make_entry(s, f"e{i}", pad=i % 37))
    rng = random.Random(99)
    kinds: dict[str, int] = {"truncated": 0, "bitflip": 0}
    noop_redraws = 0
    bad = {}
    for s in rng.sample(specs, N_CORRUPT):
        p = entry_file(store, s)
        raw = p.read_bytes()
        while True:
            kind, mutated = _mutate(raw, rng)
            if not _same_doc(raw, mutated):
                break
            noop_redraws += 1
        kinds[kind] += 1
        p.write_bytes(mutated)
        bad[s.key] = p
    caplog.set_level(logging.WARNING, logger="torch_kevolve")
    t0 = time.monotonic()
    for _ in range(2):  # every read path, twice: still one warning per file
        for s in specs:
            e = store.get(s)
            assert (e is None) == (s.key in bad)
            assert _valid(e, s)
        assert sorted(e.key for e in store.entries()) == sorted(s.key for s in specs if s.key not in bad)
        for s in specs[:50]:
            store.loose_matches(s)
    flagged = {c.key for c in store.audit() if c.problem}
    assert flagged == set(bad)
    warns = store_warnings(caplog)
    per_file = {k: sum(str(p) in m for m in warns) for k, p in bad.items()}
    assert len(warns) == len(bad) and set(per_file.values()) == {1}
    # the "search" runs again for exactly the corrupt keys, and put over a corrupt file repairs it
    searched = []
    for s in specs:
        if store.get(s) is None:
            searched.append(s.key)
            assert store.put(make_entry(s, "re-searched"))
    assert set(searched) == set(bad)
    assert [c.problem for c in store.audit() if c.problem] == []
    assert len(store_warnings(caplog)) == len(bad)
    wall = time.monotonic() - t0
    _figures("corruption", corrupted=len(bad), truncated=kinds["truncated"], bitflipped=kinds["bitflip"],
             intact=N_INTACT, detected=len(flagged & set(bad)), warnings=len(warns), researched=len(searched),
             noop_flips_redrawn=noop_redraws, crashes=0, wall_s=round(wall, 2))


# -- 4. other versions, full disk, shipped layer -------------------------------------------------------
def test_other_versions_are_loose_matches_not_hits_nor_warnings(tmp_path: Path, caplog: Any) -> None:
    store = KernelStore(tmp_path / ODD_ROOT)
    caplog.set_level(logging.WARNING, logger="torch_kevolve")
    old = make_spec(versions=(("template", "0"), ("torch", "2.11.0"), ("triton", "3.4.0")))
    assert store.put(make_entry(old, "old"))
    new = make_spec()
    assert store.get(new) is None  # another torch/triton/template: never used as is
    assert [e.meta["tag"] for e in store.loose_matches(new)] == ["old"]  # but seeds the new search
    assert store.put(make_entry(new, "new"))
    assert store.get(new).meta["tag"] == "new" and store.get(old).meta["tag"] == "old"
    assert store_warnings(caplog) == []  # a version miss is not a corruption


def test_enospc_mid_write_keeps_old_entry(tmp_path: Path, caplog: Any, monkeypatch: Any) -> None:
    """The disk fills after half the bytes are written (the open/fsync/replace failures are in
    test_store.py): put returns False, nothing partial is left, the old entry is intact."""
    root = tmp_path / ODD_ROOT
    store = KernelStore(root)
    spec = make_spec()
    assert store.put(make_entry(spec, "old"))
    real_fdopen = os.fdopen

    class Full(io.FileIO):
        def write(self, b: Any) -> int:
            super().write(bytes(b)[: len(b) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(fd, "wb"))
    caplog.set_level(logging.WARNING, logger="torch_kevolve")
    assert store.put(make_entry(spec, "new", pad=5000)) is False
    assert store.put(make_entry(make_spec(n=1), "other")) is False
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert leftovers(root) == []
    assert store.get(spec).meta["tag"] == "old" and store.get(make_spec(n=1)) is None
    msgs = store_warnings(caplog, "cannot write")
    assert len(msgs) == 1 and "no space left" in msgs[0]


def test_corrupt_shipped_entry_is_refused(tmp_path: Path, caplog: Any) -> None:
    shipped = tmp_path / "shipped é"
    a, b = make_spec(), make_spec(n=1)
    for s in (a, b):
        assert KernelStore(shipped).put(make_entry(s, "shipped"))
    p = entry_file(KernelStore(shipped), a)
    raw = bytearray(p.read_bytes())
    raw[raw.index(b"kernel_") + 2] ^= 0x04  # one bit of the shipped source
    p.write_bytes(bytes(raw))
    caplog.set_level(logging.WARNING, logger="torch_kevolve")
    store = KernelStore(tmp_path / ODD_ROOT, shipped)
    assert store.get(a) is None and store.get(a) is None
    assert store.get(b).layer == "shipped"
    assert [e.key for e in store.entries()] == [b.key]
    assert len(store_warnings(caplog, "checksum mismatch")) == 1
    assert store.put(make_entry(a, "local"))  # re-searched into the user layer, which wins
    assert store.get(a).meta["tag"] == "local"


# -- 5. a store writable by other users ----------------------------------------------------------------
@pytest.mark.parametrize("where,bits", [("root", 0o002), ("root", 0o020), ("v1", 0o002), ("locks", 0o020)])
def test_shared_store_is_refused_unless_opted_in(tmp_path: Path, caplog: Any, monkeypatch: Any, where: str, bits: int) -> None:
    monkeypatch.delenv("KEVOLVE_ALLOW_SHARED_STORE", raising=False)
    root = tmp_path / ODD_ROOT
    spec, other = make_spec(), make_spec(n=1)
    own = KernelStore(root)
    assert own.put(make_entry(spec, "planted?"))
    with own.claim(spec, 1):
        pass
    d = {"root": root, "v1": root / "v1", "locks": root / "locks"}[where]
    os.chmod(d, 0o755 | bits)
    caplog.set_level(logging.WARNING, logger="torch_kevolve")
    store = KernelStore(root)
    assert "writable by" in store.shared_problem()
    assert store.get(spec) is None and list(store.entries()) == [] and store.loose_matches(spec) == []
    assert store.put(make_entry(other)) is False
    assert store.remove(spec.key) is False
    assert store.update_meta(spec.key, {"x": 1}) is False
    with pytest.raises(ValueError, match="KEVOLVE_ALLOW_SHARED_STORE"):
        store.put_bytes(spec.key, entry_file(store, spec).read_bytes())
    with store.claim(other, 0.1) as got:
        assert got  # the compile goes on: searched, used in-process, not stored
    msgs = store_warnings(caplog)
    assert len(msgs) == 1 and "refusing kernel store" in msgs[0] and str(d) in msgs[0]
    assert "KEVOLVE_ALLOW_SHARED_STORE=1" in msgs[0] and "chmod go-w" in msgs[0]
    assert not entry_file(store, other).exists()
    # opting in: the argument, the environment, the settings
    assert KernelStore(root, allow_shared=True).get(spec).meta["tag"] == "planted?"
    monkeypatch.setenv("KEVOLVE_ALLOW_SHARED_STORE", "1")
    opted = KernelStore(root)
    assert opted.shared_problem() == "" and opted.put(make_entry(other)) and opted.get(other) is not None
    settings = Settings.from_env({"cache_dir": root, "shipped_dir": None})
    assert settings.allow_shared_store is True
    assert KernelStore.from_settings(settings).get(spec) is not None
    monkeypatch.setenv("KEVOLVE_ALLOW_SHARED_STORE", "0")
    assert Settings.from_env({"cache_dir": root}).allow_shared_store is False
    assert KernelStore.from_settings(Settings.from_env({"cache_dir": root})).get(spec) is None
    os.chmod(d, 0o755)
    assert KernelStore(root).get(spec) is not None  # fixed with chmod go-w: trusted again


def test_store_never_makes_itself_shared(tmp_path: Path, monkeypatch: Any) -> None:
    """Under a umask of 002 (common with per-user groups) new store dirs and files are still
    0755/0644, so a fresh store isn't refused by the check above; read-only stores (the package's
    shipped kernel_cache/) are not checked."""
    monkeypatch.delenv("KEVOLVE_ALLOW_SHARED_STORE", raising=False)
    old = os.umask(0o002)
    try:
        root = tmp_path / ODD_ROOT / "nested"
        store = KernelStore(root)
        assert store.put(make_entry(make_spec()))
        with store.claim(make_spec(), 1):
            pass
    finally:
        os.umask(old)
    for p in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert not mode & 0o022, (p, oct(mode))
    assert KernelStore(root).shared_problem() == "" and KernelStore(root).get(make_spec()) is not None
    os.chmod(root, 0o777)
    assert KernelStore(root, readonly=True).get(make_spec()) is not None
    os.chmod(root, 0o755)


def test_kill9_while_holding_a_claim_frees_the_key(tmp_path: Path) -> None:
    """A compile killed while searching (holding the key's lock) doesn't block the next process:
    the lock is an OS lock, released with the process."""
    root = tmp_path / ODD_ROOT
    spec = make_spec()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            with KernelStore(root).claim(spec, 5) as got:
                os.write(w, b"1" if got else b"0")
                time.sleep(60)
        finally:
            os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read(1) == b"1"
    store = KernelStore(root)
    with store.claim(spec, 0.2) as got:
        assert got is False  # held by the live child
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    t0 = time.monotonic()
    with store.claim(spec, 5) as got:
        assert got is True
    assert time.monotonic() - t0 < 2
