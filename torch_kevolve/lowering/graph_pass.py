"""The post-grad pass Inductor runs for us: detect → key → store → (search | queue) → rewrite."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import operator
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from .. import queue, stats
from ..config import Settings
from ..detect import CONTESTED, REGION, Finding, detect
from ..families import get_family
from ..families.base import Match
from ..log import warn_once
from ..spec import OpSpec
from ..store import Entry, KernelStore

log = logging.getLogger("torch_kevolve")

_source_checked: dict[str, bool] = {}  # entry checksum -> its source is the template's current one


def _note_stale_source(entry: Entry) -> None:
    """A user-store kernel searched from an older template source (before a template fix, or the device
    asserts) is still served, since it was verified; say once that ``kevolve cache refresh`` updates it."""
    if entry.layer != "user" or not entry.candidate.origin.startswith("template"):
        return
    if entry.checksum not in _source_checked:
        from ..cache_tools import current_source

        src = current_source(entry)
        _source_checked[entry.checksum] = src is None or src == entry.candidate.source
        if not _source_checked[entry.checksum]:
            stats.bump("stale_source")
            warn_once("kevolve: the stored kernel %s was searched from an older %r template source; "
                      "`kevolve cache refresh --yes` brings it to the current one", entry.key, entry.candidate.template)

#: findings of the most recent graphs this process compiled (``kevolve explain`` prints them)
REPORTS: list[list[Finding]] = []


@functools.lru_cache(1)
def _package_hash() -> str:
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


class KevolvePass(CustomGraphPass):
    def __init__(self, settings: Settings, store: KernelStore | None = None, user_pass: Any = None, timer: Any = None) -> None:
        self.settings = settings
        self.store = store or KernelStore.from_settings(settings)
        self.user_pass = user_pass
        self.timer = timer

    # Inductor's FX graph cache keys on this: it must change whenever our decisions could.
    def uuid(self) -> bytes:
        h = hashlib.sha256()
        h.update(_package_hash().encode())
        h.update(self.store.generation().encode())
        h.update(repr(sorted(dataclasses.asdict(self.settings).items())).encode())
        if self.user_pass is not None:
            up = self.user_pass.uuid() if hasattr(self.user_pass, "uuid") else repr(self.user_pass)
            h.update(up if isinstance(up, bytes) else str(up).encode())
        return h.hexdigest().encode()

    def __call__(self, graph: fx.Graph) -> None:
        if self.user_pass is not None:
            self.user_pass(graph)
        if self.settings.mode == "off":
            return
        findings = detect(graph, self.settings.contest)
        REPORTS.append(findings)
        del REPORTS[:-32]
        changed = False
        for f in findings:
            if f.match is None:
                f.decision = "Inductor (its lowering)" if f.reason in (CONTESTED, REGION) else "Inductor (ATen fallback)"
                continue
            try:
                entry = self._resolve(f, f.match.spec)
                if entry is not None and (entry.meta.get("verify") or {}).get("ok") is False:
                    # `kevolve cache verify` found it wrong on this device: never serve it
                    f.decision = "Inductor (stored kernel failed `kevolve cache verify`)"
                    stats.bump("failed_verify_skipped")
                    entry = None
                if entry is not None and entry.meta.get("use") is False:
                    sp = entry.meta.get("speedup")
                    f.decision = f"Inductor (best kernel found is slower: {sp:.2f}x)" if sp else "Inductor (stored kernel not faster)"
                    stats.bump("slower_than_baseline")
                    entry = None
                if entry is not None:
                    self._rewrite(graph, f, f.match, entry)
                    changed = True
            except Exception as e:  # noqa: BLE001 - never break the user's compile
                log.warning("kevolve: keeping Inductor's lowering for %s: %s: %s", f.node, type(e).__name__, e)
                f.decision = f"Inductor (error: {type(e).__name__})"
        if changed:
            graph.eliminate_dead_code()
            graph.lint()

    # -- decisions ---------------------------------------------------------------------------------
    def _resolve(self, f: Finding, spec: OpSpec) -> Entry | None:
        entry = self.store.get(spec)
        if entry is not None:
            stats.bump("store_hits")
            f.decision = f"stored kernel ({entry.layer} store)"
            _note_stale_source(entry)
            return entry
        stats.bump("store_misses")
        mode = self.settings.mode
        if mode == "cache":
            f.decision = "Inductor (cache mode, not stored)"
            return None
        if mode == "offline":
            queue.record(self.settings.cache_dir, spec)
            stats.bump("queued")
            f.decision = "Inductor (queued for prewarm)"
            return None
        with self.store.claim(spec, self.settings.lock_timeout_s) as got:
            if not got:
                f.decision = "Inductor (another process is searching this key)"
                return None
            entry = self.store.get(spec)
            if entry is not None:
                stats.bump("store_hits")
                f.decision = "stored kernel (found after waiting for another process)"
                return entry
            from ..search import search_spec

            entry, outcome = search_spec(get_family(spec.family), spec, self.settings, timer=self.timer)
            if entry is None:
                f.decision = (f"Inductor ({outcome.stop_reason})" if not outcome.results and outcome.stop_reason
                              else f"Inductor (search found no verified kernel in {len(outcome.results)} candidates)")
                return None
            if not self.store.put(entry):
                warn_once("kevolve: the searched kernel for %s could not be stored; it is used in this process only", spec.key)
            sp = outcome.speedup
            timed = sp and spec.device.type == "cuda"  # interpreter timings say nothing about speed
            f.decision = f"searched now ({len(outcome.results)} candidates" + (f", {sp:.2f}x vs {outcome.baseline_kind})" if timed else ")")
            return entry

    def _route(self, spec: OpSpec) -> str:
        r = self.settings.route
        if spec.dynamic:  # a bucket: plans are made per call for the concrete sizes (custom-op route)
            return "custom_op"
        if spec.device.type != "cuda":
            if r == "triton":
                warn_once("kevolve: the Triton route needs a CUDA device; using the custom-op route on %s", spec.device.type)
            return "custom_op"
        return "triton" if r == "auto" else r

    # -- graph surgery -----------------------------------------------------------------------------
    def _rewrite(self, graph: fx.Graph, f: Finding, m: Match, entry: Entry) -> None:
        from . import runtime

        node = next(n for n in graph.nodes if n.name == f.node)
        ld = runtime.install(m.spec, entry.candidate)
        if m.dynamic is not None:  # the kernel is verified for its buckets only: guard the graph on them
            from ..dynamic import install_guards

            install_guards(m.dynamic)
        assert ld.plan is not None
        result_users = m.result_users
        fake_outs = []
        for j in range(len(ld.plan.outputs)):
            users = result_users.get(j, [])
            fake_outs.append(users[0].meta["val"] if users else None)
        if any(fk is None for fk in fake_outs):
            raise ValueError("an output of the op has no FakeTensor metadata")
        route = self._route(m.spec)
        if route == "triton":
            from .triton_route import insert_call

            new = insert_call(graph, node, m.spec, ld.module, ld.plan, m.inputs, fake_outs)
        else:
            from .custom_op import OP

            with graph.inserting_before(node):
                call = graph.call_function(OP, (runtime.spec_handle(m.spec), list(m.inputs)))
                call.meta["val"] = list(fake_outs)
                new = []
                for j in range(len(ld.plan.outputs)):
                    g = graph.call_function(operator.getitem, (call, j))
                    g.meta["val"] = fake_outs[j]
                    new.append(g)
        for j, users in result_users.items():
            for u in users:
                u.replace_all_uses_with(new[j])
                if u is not node:  # single-output ops: the node itself is its result user
                    graph.erase_node(u)
        for u in list(node.users):
            if not u.users:
                graph.erase_node(u)
        if not node.users:
            graph.erase_node(node)
        if m.region:  # a region: its inner nodes (scores, pointwise, operand copies) are dead now
            left = {n.name: n for n in graph.nodes if n.name in m.region}
            while True:
                dead = [nm for nm, n in left.items() if not n.users]
                for nm in dead:
                    graph.erase_node(left.pop(nm))
                if not dead:
                    break
        stats.bump(f"rewritten_{route}")
        f.decision += f" → {route} route"
