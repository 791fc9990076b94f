from __future__ import annotations

import logging

log = logging.getLogger("torch_kevolve")
_once: set[str] = set()


def warn_once(msg: str, *args: object) -> None:
    key = msg % args if args else msg
    if key not in _once:
        _once.add(key)
        log.warning(msg, *args)


def info_once(msg: str, *args: object) -> None:
    key = msg % args if args else msg
    if key not in _once:
        _once.add(key)
        log.info(msg, *args)
