"""Op specs and their keys.

An :class:`OpSpec` describes one long-tail call precisely enough that a kernel verified for it is
correct for every call with the same spec. Two keys come out of it, as in Helion's cache:

* the *loose* key: op + signature (dtypes, shape buckets, strides, constants) + device;
* the *strict* key: loose + software versions (torch, triton, template version).

A stored kernel is used only on a strict hit; loose hits seed a new search on other versions.
Keys are sha256 over canonical JSON, so they are stable across processes, runs and hosts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

SCHEMA_VERSION = 1


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _sha(obj: Any) -> str:
    return hashlib.sha256(_canon(obj).encode()).hexdigest()


def _tuplize(v: Any) -> Any:
    """JSON turns tuples into lists; specs must stay hashable and compare equal after a round trip."""
    return tuple(_tuplize(x) for x in v) if isinstance(v, list) else v


def bucket_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Shape bucketing. Exact today; symbolic buckets (issue 11) replace this function."""
    return tuple(int(s) for s in shape)


@dataclass(frozen=True)
class TensorSig:
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @staticmethod
    def of(t: torch.Tensor) -> "TensorSig":
        """The signature of a real or fake tensor with static sizes. Symbolic sizes/strides (SymInts,
        ``dynamic=True``) raise ValueError: ``int()`` on them would specialize the graph to this one
        size, and a kernel verified for it must never be served to the others (families check this
        first and skip the node; this is the safety net for one that forgets)."""
        if not all(type(s) is int for s in (*t.shape, *t.stride())):
            raise ValueError("symbolic sizes/strides (dynamic shapes not served yet)")
        return TensorSig(str(t.dtype).replace("torch.", ""), bucket_shape(t.shape), tuple(int(s) for s in t.stride()))

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def contiguous(self) -> bool:
        expected, acc = [], 1
        for s in reversed(self.shape):
            expected.append(acc)
            acc *= max(int(s), 1)
        expected.reverse()
        return all(sz <= 1 or st == ex for sz, st, ex in zip(self.shape, self.stride, expected))

    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n

    def matches(self, t: torch.Tensor) -> bool:
        return (
            str(t.dtype).replace("torch.", "") == self.dtype
            and tuple(t.shape) == self.shape
            and tuple(t.stride()) == self.stride
        )


@dataclass(frozen=True)
class DeviceSig:
    type: str  # "cuda" | "cpu"
    name: str  # "NVIDIA H100 80GB HBM3" | "cpu"
    arch: str  # "sm_90" | "interpreter"

    @staticmethod
    def of(device: torch.device | str) -> "DeviceSig":
        device = torch.device(device)
        if device.type == "cuda":
            idx = device.index if device.index is not None else torch.cuda.current_device()
            major, minor = torch.cuda.get_device_capability(idx)
            return DeviceSig("cuda", torch.cuda.get_device_name(idx), f"sm_{major}{minor}")
        return DeviceSig(device.type, device.type, "interpreter")


def software_versions(template_version: str) -> tuple[tuple[str, str], ...]:
    import triton

    return (("template", template_version), ("torch", torch.__version__.split("+")[0]), ("triton", triton.__version__))


@dataclass(frozen=True)
class OpSpec:
    family: str
    op: str
    args: tuple[TensorSig | None, ...]
    consts: tuple[tuple[str, Any], ...]
    device: DeviceSig
    versions: tuple[tuple[str, str], ...] = field(default=())
    # Bucketed symbolic sizes (``torch_kevolve.dynamic``): (kind, arg, dim, symbol, lo, hi) entries;
    # ``args`` then hold the sizes the spec was found with. Empty for a static spec.
    dynamic: tuple[tuple, ...] = field(default=())

    # -- helpers ---------------------------------------------------------------------------------
    def const(self, name: str, default: Any = None) -> Any:
        for k, v in self.consts:
            if k == name:
                return v
        return default

    def _loose_obj(self) -> dict:
        d = asdict(self)
        d.pop("versions")
        d.pop("dynamic")
        d["schema"] = SCHEMA_VERSION
        if self.dynamic:  # a bucket: its ranges, not the sizes it was found with (static keys unchanged)
            from .dynamic import masked_args

            d["args"] = masked_args(self)
            names: dict[str, str] = {}  # symbols by first appearance: s3/s7 in one graph = s0/s1 in another
            d["dynamic"] = [[k, i, dim, names.setdefault(sym, f"s{len(names)}") if sym else "", lo, hi]
                            for k, i, dim, sym, lo, hi in self.dynamic]
        return d

    @property
    def loose_key(self) -> str:
        return _sha(self._loose_obj())[:32]

    @property
    def strict_key(self) -> str:
        d = self._loose_obj()
        d["versions"] = [list(v) for v in self.versions]
        return _sha(d)[:32]

    @property
    def key(self) -> str:
        """The handle the graph carries: family/loose/strict, a path in the store."""
        return f"{self.family}/{self.loose_key}/{self.strict_key}"

    def to_json(self) -> dict:
        return {
            "family": self.family,
            "op": self.op,
            "args": [None if a is None else asdict(a) for a in self.args],
            "consts": [[k, v] for k, v in self.consts],
            "device": asdict(self.device),
            "versions": [list(v) for v in self.versions],
            **({"dynamic": [list(e) for e in self.dynamic]} if self.dynamic else {}),
        }

    @staticmethod
    def from_json(d: dict) -> "OpSpec":
        return OpSpec(
            family=d["family"],
            op=d["op"],
            args=tuple(
                None if a is None else TensorSig(a["dtype"], tuple(a["shape"]), tuple(a["stride"])) for a in d["args"]
            ),
            consts=tuple((k, _tuplize(v)) for k, v in d["consts"]),
            device=DeviceSig(**d["device"]),
            versions=tuple((k, v) for k, v in d["versions"]),
            dynamic=tuple(tuple(e) for e in d.get("dynamic", ())),
        )

    def describe(self) -> str:
        sig = ", ".join("None" if a is None else f"{a.dtype}{list(a.shape)}" for a in self.args)
        consts = ", ".join(f"{k}={v}" for k, v in self.consts)
        text = f"{self.op}({sig}; {consts}) on {self.device.name}"
        if self.dynamic:
            from .dynamic import describe

            text += f" [buckets {describe(self)}]"
        return text
