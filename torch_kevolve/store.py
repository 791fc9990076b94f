"""The on-disk kernel store: one verified kernel per strict key, shared by every process on the host.

Layout (both layers)::

    <root>/v1/<family>/<loose_key>/<strict_key>.json
    <root>/locks/<strict_key>.lock          (user layer only)

Two layers are read: the *user* layer (``Settings.cache_dir``, written by searches) and the
*shipped* layer (the repo's ``kernel_cache/``, read-only: never written, never locked). The user
layer wins on a strict-key tie, so a local re-search overrides what shipped.

Why it is built this way:

* Writers go through a temp file in the entry's directory + fsync + ``os.replace``, so a reader
  sees either the old file, the new file or no file, never a torn one, with no reader locks.
* Each file carries a sha256 checksum over its canonical JSON. A file that fails any check
  (parse, schema, checksum, key vs. path) is a *miss* with one warning naming it; it is never
  raised into the compile and never deleted here (that is for ``kevolve cache verify/prune``).
* Read paths never create directories, so a read-only store (a shared NFS cache, a container
  image) still serves hits; ``put`` then returns False with one warning instead of raising.
* ``claim`` is a per-key file lock so N processes compiling the same model search each key once:
  the winner searches and stores, the others wait, re-check ``get`` and find the entry.
* Entries are code that will run in the user's process, so a user store whose root (or ``v1/``,
  ``locks/``) is writable by group or others is refused, reads and writes, with one warning,
  unless the user opts in (``Settings.allow_shared_store`` / ``KEVOLVE_ALLOW_SHARED_STORE=1``).
  Directories are created ``0o755`` and files ``0o644`` whatever the umask, so the store never
  makes itself shared (opted-in shared stores keep the umask's modes instead).
* Temp files left by a writer killed mid-write are dotfiles, never read as entries; a later write
  in the same directory removes those older than ``STALE_TMP_S``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .families.base import Candidate
from .log import log, warn_once
from .spec import OpSpec

if TYPE_CHECKING:
    from .config import Settings

STORE_SCHEMA = 1
LAYOUT_DIR = f"v{STORE_SCHEMA}"
LAYERS = ("user", "shipped")

_FAMILY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_HEX_RE = re.compile(r"^[0-9a-f]{1,64}$")
_SUFFIX = ".json"
STALE_TMP_S = 600.0  # an in-flight temp file is milliseconds old; one this old lost its writer
_SHARED_BITS = stat.S_IWGRP | stat.S_IWOTH
_SHARED_ENV = "KEVOLVE_ALLOW_SHARED_STORE"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _checksum(doc: dict) -> str:
    """sha256 over canonical JSON of everything but the checksum itself."""
    body = {k: doc.get(k) for k in ("schema", "key", "spec", "candidate", "meta")}
    return hashlib.sha256(_canon(body).encode("utf-8")).hexdigest()


def _tupleize(v: Any) -> Any:
    """JSON turns tuples into lists; Candidate.config must stay hashable, so turn them back."""
    if isinstance(v, list):
        return tuple(_tupleize(x) for x in v)
    return v


def split_key(key: str) -> tuple[str, str, str] | None:
    """``family/loose/strict`` → its parts, or None if it is not a safe store key.

    Keys come from compiled graphs and the CLI, so they are checked before becoming paths
    (no ``..``, no separators, hex hashes)."""
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) != 3:
        return None
    fam, loose, strict = parts
    if not _FAMILY_RE.match(fam) or fam in (".", "..") or not _HEX_RE.match(loose) or not _HEX_RE.match(strict):
        return None
    return fam, loose, strict


@dataclass
class Entry:
    """A stored kernel: the spec it was verified for, the winning candidate and its evidence."""

    spec: OpSpec
    candidate: Candidate
    meta: dict  # JSON-able: timings, baseline, speedup, correctness evidence, proposer, search stats, date...
    checksum: str = ""  # filled by put(); verified on every read
    layer: str = field(default="", compare=False)  # "user" | "shipped": where it was read from (not stored)

    @property
    def key(self) -> str:
        return self.spec.key

    def to_doc(self) -> dict:
        """The JSON document as written (checksum not yet filled in)."""
        c = self.candidate
        return {
            "schema": STORE_SCHEMA,
            "key": self.spec.key,
            "spec": self.spec.to_json(),
            "candidate": {
                "source": c.source,
                "config": [[k, v] for k, v in c.config],
                "origin": c.origin,
                "template": c.template,
            },
            "meta": self.meta,
        }

    @staticmethod
    def from_doc(doc: dict, layer: str = "") -> "Entry":
        c = doc["candidate"]
        cand = Candidate(
            source=c["source"],
            config=tuple((str(k), _tupleize(v)) for k, v in c["config"]),
            origin=c.get("origin", "template"),
            template=c.get("template", ""),
        )
        return Entry(OpSpec.from_json(doc["spec"]), cand, dict(doc.get("meta") or {}), doc["checksum"], layer)


@dataclass
class Checked:
    """One entry file and the store's verdict on it: ``entry`` when valid, else ``problem``."""

    layer: str
    path: Path
    key: str
    entry: Entry | None
    problem: str | None = None


class _Invalid(Exception):
    """A stored file that must be skipped; the message says why."""


class KernelStore:
    """Keyed kernel store over a writable user layer and an optional read-only shipped layer."""

    def __init__(self, root: Path | str, shipped: Path | str | None = None, readonly: bool = False,
                 allow_shared: bool | None = None) -> None:
        self.root = Path(root).expanduser()
        self.shipped = None if shipped is None else Path(shipped).expanduser()
        if self.shipped is not None and _same_path(self.root, self.shipped):
            self.shipped = None  # one directory, one layer: don't read (and list) it twice
        self.readonly = readonly
        # None: the environment decides (KEVOLVE_ALLOW_SHARED_STORE=1 opts in).
        self.allow_shared = _env_flag(_SHARED_ENV) if allow_shared is None else bool(allow_shared)
        self._trust: str | None = None  # "" trusted, else why not; None: not checked yet

    @classmethod
    def from_settings(cls, settings: "Settings") -> "KernelStore":
        return cls(settings.cache_dir, settings.shipped_dir,
                   allow_shared=getattr(settings, "allow_shared_store", None))

    # -- trust -------------------------------------------------------------------------------------
    def shared_problem(self) -> str:
        """Why the user layer is refused ("" when it is not): a store directory writable by group or
        others lets another user plant kernels this process would run. Checked once per instance
        (once the root exists); never for ``readonly`` stores (the package's own shipped files) or
        when the user opted in. Mode bits are checked even as root, where permissions don't bite."""
        if self.readonly or self.allow_shared:
            return ""
        if self._trust is not None:
            return self._trust
        bad: list[str] = []
        for d in (self.root, self.root / LAYOUT_DIR, self.root / "locks"):
            try:
                st = os.stat(d)
            except FileNotFoundError:
                if d == self.root:
                    return ""  # nothing there yet: check again once something is
                continue
            except OSError:
                continue  # unreadable: reads/writes fail on their own, with their own warning
            if st.st_mode & _SHARED_BITS:
                who = " and ".join(w for w, b in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & b)
                bad.append(f"{d} is writable by {who} (mode {stat.S_IMODE(st.st_mode):o})")
        self._trust = "; ".join(bad)
        return self._trust

    def _refused(self) -> bool:
        why = self.shared_problem()
        if why:
            warn_once("kevolve: refusing kernel store %s: %s, so another user could plant kernels that this "
                      "process would run. Fix it with `chmod go-w` on those directories, or opt in with "
                      "KEVOLVE_ALLOW_SHARED_STORE=1 (Settings.allow_shared_store=True) if you trust every "
                      "user who can write there. Kernels are searched and used in this process only.",
                      str(self.root), why)
        return bool(why)

    def __repr__(self) -> str:
        return f"KernelStore(root={str(self.root)!r}, shipped={None if self.shipped is None else str(self.shipped)!r}, readonly={self.readonly})"

    # -- paths -------------------------------------------------------------------------------------
    def _layers(self, layer: str | None = None, trusted: bool = True) -> list[tuple[str, Path]]:
        if layer is not None and layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS} or None, got {layer!r}")
        out = [] if trusted and self._refused() else [("user", self.root / LAYOUT_DIR)]
        if self.shipped is not None:
            out.append(("shipped", self.shipped / LAYOUT_DIR))
        return [(n, p) for n, p in out if layer is None or n == layer]

    @staticmethod
    def _rel(fam: str, loose: str, strict: str) -> Path:
        return Path(fam) / loose / f"{strict}{_SUFFIX}"

    def path_for(self, key: str, layer: str = "user") -> Path | None:
        """Where ``key`` lives in ``layer`` (whether or not it exists); None for a malformed key."""
        parts = split_key(key)
        bases = [base for _, base in self._layers(layer, trusted=False)]
        if parts is None or not bases:
            return None
        return bases[0] / self._rel(*parts)

    # -- reading -----------------------------------------------------------------------------------
    def _load(self, path: Path, fam: str, loose: str, strict: str, layer: str) -> Entry | None:
        """Read and check one file. Missing → None silently; invalid → None with one warning."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except (NotADirectoryError, IsADirectoryError) as e:
            return self._skip(path, f"not a regular file ({e.strerror})")
        except OSError as e:
            return self._skip(path, f"unreadable ({e.strerror or e})")
        try:
            return self._check(raw, f"{fam}/{loose}/{strict}", layer)
        except _Invalid as e:
            return self._skip(path, str(e))

    @staticmethod
    def _check(raw: bytes, path_key: str, layer: str) -> Entry:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise _Invalid(f"not valid JSON (truncated or garbage?): {e}") from None
        if not isinstance(doc, dict):
            raise _Invalid("not a JSON object")
        if doc.get("schema") != STORE_SCHEMA:
            raise _Invalid(f"store schema {doc.get('schema')!r}, this kevolve reads schema {STORE_SCHEMA}")
        if doc.get("key") != path_key:
            raise _Invalid(f"its key {doc.get('key')!r} does not match its path ({path_key})")
        if not isinstance(doc.get("checksum"), str) or not doc["checksum"]:
            raise _Invalid("no checksum")
        if _checksum(doc) != doc["checksum"]:
            raise _Invalid("checksum mismatch (file modified or corrupted)")
        try:
            entry = Entry.from_doc(doc, layer)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise _Invalid(f"malformed entry ({type(e).__name__}: {e})") from None
        if entry.spec.key != path_key:
            # Same checksum but the spec hashes elsewhere: key derivation changed since it was written.
            raise _Invalid(f"its spec now hashes to {entry.spec.key}, not its path ({path_key})")
        return entry

    @staticmethod
    def _skip(path: Path, why: str) -> None:
        warn_once("kevolve: skipping kernel store entry %s: %s (treated as a miss; left in place for "
                  "`kevolve cache verify/prune`)", str(path), why)
        return None

    def get(self, spec: OpSpec) -> Entry | None:
        """Strict-key lookup: user layer first, then shipped. Never raises for a bad file."""
        return self.get_by_key(spec.key)

    def get_by_key(self, key: str) -> Entry | None:
        """Lookup by the ``family/loose/strict`` handle a compiled graph carries."""
        parts = split_key(key)
        if parts is None:
            log.debug("kevolve: %r is not a kernel store key", key)
            return None
        for layer, base in self._layers():
            e = self._load(base / self._rel(*parts), *parts, layer)
            if e is not None:
                return e
        return None

    def _scan(self, layer: str | None = None, family: str | None = None, loose: str | None = None
              ) -> Iterator[tuple[str, Path, str, str, str]]:
        """(layer, path, family, loose, strict) of every entry file, sorted within each layer."""
        for name, base in self._layers(layer):
            fams = [family] if family is not None else _listdir(base)
            for fam in fams:
                if not _FAMILY_RE.match(fam):
                    continue
                looses = [loose] if loose is not None else _listdir(base / fam)
                for lk in looses:
                    if not _HEX_RE.match(lk):
                        continue
                    for fn in _listdir(base / fam / lk):
                        if fn.startswith(".") or not fn.endswith(_SUFFIX):
                            continue  # in-flight temp files are dotfiles
                        strict = fn[: -len(_SUFFIX)]
                        if _HEX_RE.match(strict):
                            yield name, base / fam / lk / fn, fam, lk, strict

    def loose_matches(self, spec: OpSpec) -> list[Entry]:
        """Valid entries with ``spec``'s loose key, any versions (the exact strict hit included):
        seeds for a search on new torch/triton/template versions. User layer first."""
        seen: set[str] = set()
        out: list[Entry] = []
        for layer, path, fam, lk, strict in self._scan(family=spec.family, loose=spec.loose_key):
            if strict in seen:
                continue
            e = self._load(path, fam, lk, strict, layer)
            if e is not None:
                seen.add(strict)
                out.append(e)
        return out

    def entries(self, layer: str | None = None) -> Iterator[Entry]:
        """Every valid entry. With ``layer=None`` the effective view (a user entry hides the shipped
        one with the same key, as ``get`` does); with a layer name, everything in that layer."""
        seen: set[str] = set()
        for name, path, fam, lk, strict in self._scan(layer):
            key = f"{fam}/{lk}/{strict}"
            if key in seen:
                continue
            e = self._load(path, fam, lk, strict, name)
            if e is not None:
                seen.add(key)
                yield e

    def audit(self, layer: str | None = None) -> Iterator["Checked"]:
        """Every entry *file* in ``layer`` (None: both, shadowed ones included) with its verdict.

        Unlike ``entries`` it reports invalid files (with the reason) instead of skipping them with a
        warning: it is what ``kevolve cache verify/prune`` judge and clean up."""
        for name, path, fam, lk, strict in self._scan(layer):
            key = f"{fam}/{lk}/{strict}"
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue  # removed while scanning
            except OSError as e:
                yield Checked(name, path, key, None, f"unreadable ({e.strerror or e})")
                continue
            try:
                yield Checked(name, path, key, self._check(raw, key, name), None)
            except _Invalid as e:
                yield Checked(name, path, key, None, str(e))

    def generation(self) -> str:
        """Cheap fingerprint of both layers (relative paths + size + mtime_ns + inode), no file reads.

        It feeds Inductor's FX-graph-cache key, so it must change whenever an entry is added,
        replaced or removed (the inode catches a same-size replace within one mtime tick)."""
        h = hashlib.sha256()
        for layer, path, fam, lk, strict in self._scan():
            try:
                st = path.stat()
            except OSError:
                continue  # removed while scanning
            h.update(f"{layer}|{fam}/{lk}/{strict}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}\n".encode())
        return h.hexdigest()[:24]

    # -- writing -----------------------------------------------------------------------------------
    def _cannot_write(self, what: str, why: str) -> bool:
        warn_once("kevolve: cannot %s in kernel store %s (%s); searched kernels are used in this "
                  "process only", what, str(self.root), why)
        return False

    def put(self, entry: Entry) -> bool:
        """Store ``entry`` atomically in the user layer and fill ``entry.checksum``.

        Returns False (one warning, no exception, no temp file left) when the store can't be written:
        ``readonly``, permissions, ENOSPC, or a ``meta`` JSON can't represent."""
        if self.readonly:
            return self._cannot_write("write", "opened read-only")
        parts = split_key(entry.key)
        if parts is None:
            return self._cannot_write("write", f"unsafe key {entry.key!r}")
        if self._refused():
            return False
        try:
            # Round-trip through JSON first so the checksum is over exactly what a reader will load
            # (tuples → lists, non-str keys → str, odd objects → str).
            doc = json.loads(json.dumps(entry.to_doc(), default=str))
            doc["checksum"] = _checksum(doc)
            data = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"
        except (TypeError, ValueError, RecursionError) as e:
            return self._cannot_write("serialize an entry", f"{type(e).__name__}: {e}")
        final = self.root / LAYOUT_DIR / self._rel(*parts)
        if not self._write_atomic(final, data):
            return False
        entry.checksum = doc["checksum"]
        log.debug("kevolve: stored %s at %s", entry.key, final)
        return True

    def _write_atomic(self, final: Path, data: bytes) -> bool:
        """Temp file in ``final``'s directory + fsync + ``os.replace``: readers see old, new or nothing."""
        tmp = final.with_name(f".{final.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            self._mkdirs(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666 if self.allow_shared else 0o644)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                _unlink_quiet(tmp)
                raise
            try:
                os.replace(tmp, final)
            except BaseException:
                _unlink_quiet(tmp)
                raise
        except OSError as e:
            return self._cannot_write("write", _why(e))
        _fsync_dir(final.parent)
        _sweep_stale_tmp(final.parent)
        return True

    def _mkdirs(self, d: Path) -> None:
        """``mkdir -p`` with an explicit mode for every level inside the root (and the root), so a
        umask of 002 doesn't make the store group-writable and then refused by ``shared_problem``."""
        mode = 0o777 if self.allow_shared else 0o755
        try:
            parts = d.relative_to(self.root).parts
        except ValueError:
            d.mkdir(mode=mode, parents=True, exist_ok=True)
            return
        self.root.parent.mkdir(parents=True, exist_ok=True)
        cur = self.root
        cur.mkdir(mode=mode, exist_ok=True)
        for part in parts:
            cur = cur / part
            cur.mkdir(mode=mode, exist_ok=True)

    def put_bytes(self, key: str, data: bytes) -> Entry:
        """Store an entry file's exact bytes (an imported one) in the user layer, atomically.

        The bytes are checked as a reader would check them (JSON, schema, checksum, key vs. path)
        before anything is written, so a bad file never lands. Raises ValueError naming the problem
        (an unwritable store included)."""
        parts = split_key(key)
        if parts is None:
            raise ValueError(f"unsafe key {key!r}")
        if self.readonly:
            raise ValueError(f"kernel store {self.root} is opened read-only")
        if self._refused():
            raise ValueError(f"kernel store {self.root} is refused: {self.shared_problem()} "
                             f"(opt in with {_SHARED_ENV}=1)")
        try:
            entry = self._check(data, key, "user")
        except _Invalid as e:
            raise ValueError(str(e)) from None
        if not self._write_atomic(self.root / LAYOUT_DIR / self._rel(*parts), data):
            raise ValueError(f"cannot write kernel store {self.root} (see the warning above)")
        return entry

    def update_meta(self, key: str, patch: dict, expect_checksum: str | None = None, timeout: float = 30.0) -> bool:
        """Merge ``patch`` into a user-layer entry's meta and rewrite it atomically (new checksum).

        Held under the key's ``claim`` lock and re-read inside it, so a concurrent search or import
        is never overwritten with stale content; with ``expect_checksum`` the update is dropped
        (False) when the file changed since the caller judged it. The shipped layer is never written."""
        parts = split_key(key)
        if parts is None or self.readonly or self._refused():
            return False
        path = self.root / LAYOUT_DIR / self._rel(*parts)
        current = self._load(path, *parts, "user")
        if current is None:
            return False
        with self.claim(current.spec, timeout) as got:
            if not got:
                log.warning("kevolve: %s is locked by another process; not updating it", key)
                return False
            current = self._load(path, *parts, "user")
            if current is None or (expect_checksum is not None and current.checksum != expect_checksum):
                return False
            current.meta = {**current.meta, **patch}
            return self.put(current)

    def remove(self, key: str) -> bool:
        """Delete ``key`` from the user layer (the shipped layer is read-only). True if it was there."""
        parts = split_key(key)
        if parts is None:
            return False
        if self.readonly:
            return self._cannot_write("remove", "opened read-only")
        if self._refused():
            return False
        path = self.root / LAYOUT_DIR / self._rel(*parts)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as e:
            return self._cannot_write("remove", _why(e))
        _fsync_dir(path.parent)
        return True

    # -- cross-process coordination ----------------------------------------------------------------
    @contextmanager
    def claim(self, spec: OpSpec, timeout: float) -> Iterator[bool]:
        """Hold ``<root>/locks/<strict_key>.lock`` for the body; yields True if acquired within
        ``timeout`` seconds, False if another process kept it. The caller must re-check ``get``
        after a True: the previous holder may have stored the entry meanwhile.

        If no lock can be made (read-only store, unwritable root) it yields True without a lock,
        with one warning: nothing can be shared then, so waiting on other processes gains nothing."""
        from filelock import FileLock, Timeout

        lock: Any = None
        acquired = True
        if self.readonly:
            warn_once("kevolve: kernel store %s is read-only; searching without a cross-process lock", str(self.root))
        elif self._refused():
            pass  # nothing is shared through a refused store: search without waiting on anyone
        else:
            path = self.root / "locks" / f"{spec.strict_key}.lock"
            try:
                self._mkdirs(path.parent)
                lock = FileLock(str(path), timeout=max(0.0, float(timeout)),
                                **({} if self.allow_shared else {"mode": 0o644}))
                lock.acquire()
            except Timeout:
                lock, acquired = None, False
            except OSError as e:
                lock = None
                warn_once("kevolve: cannot lock %s (%s); searching without a cross-process lock",
                          str(path), _why(e))
        try:
            yield acquired
        finally:
            if lock is not None:
                lock.release()


# -- helpers ---------------------------------------------------------------------------------------
def _listdir(p: Path) -> list[str]:
    try:
        return sorted(os.listdir(p))
    except OSError:
        return []


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _why(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"not writable: {e.strerror or e}"
    return f"{type(e).__name__}: {e.strerror or e}"


def _sweep_stale_tmp(d: Path, now: float | None = None) -> int:
    """Remove temp files in ``d`` older than ``STALE_TMP_S`` (a writer killed mid-write leaves one;
    readers never see them, this only reclaims the space). Best effort; returns how many went."""
    now = time.time() if now is None else now
    n = 0
    for name in _listdir(d):
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        p = d / name
        try:
            if now - p.lstat().st_mtime > STALE_TMP_S:
                os.unlink(p)
                n += 1
        except OSError:
            pass
    return n


def _unlink_quiet(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _fsync_dir(d: Path) -> None:
    """Make the rename durable where the platform allows it (not on Windows; best effort)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
