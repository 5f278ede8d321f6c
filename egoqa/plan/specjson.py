"""Canonical JSON (sorted keys, no spaces, UTF-8 as is): what a job's key hashes and its spec
stores. `Layout` writes many objects with the same fields fast: the fields every object shares
are encoded once, the others per object, and the text is exactly `canonical` of the object."""

from __future__ import annotations

import json
from collections.abc import Iterable

# One encoder for every spec: `json.dumps` would build a new one per call (a third of its cost).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
encode = _CANONICAL.encode


def canonical(obj) -> str:
    return encode(obj)


class Layout:
    """Objects whose fields are `constants` (the same in each) plus the fields named `varying`.

    `text(values)` is `canonical({**constants, **values})` where `values` maps each varying
    field to its value already encoded (`encode(value)`, or a nested layout's text).
    """

    def __init__(self, constants: dict, varying: Iterable[str]) -> None:
        self.varying: list[str] = []
        self._pieces: list[str] = []  # the text before each varying field's value
        run = ""
        for i, name in enumerate(sorted({*constants, *varying})):
            run += ("{" if i == 0 else ",") + encode(name) + ":"
            if name in constants:
                run += encode(constants[name])
            else:
                self.varying.append(name)
                self._pieces.append(run)
                run = ""
        self._closing = run + "}" if self.varying or run else "{}"

    def text(self, values: dict[str, str]) -> str:
        parts = []
        for piece, name in zip(self._pieces, self.varying, strict=True):
            parts += (piece, values[name])
        parts.append(self._closing)
        return "".join(parts)
