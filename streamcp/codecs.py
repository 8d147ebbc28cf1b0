"""How handlers' keys and values are decoded before they see them.

A codec turns raw bytes into what the handler works with; the decoded key
and value are on ``Event.decoded_key`` and ``Event.decoded_value`` (the raw
bytes stay on ``key`` and ``value``). Built in: ``bytes`` (as is), ``text``
(UTF-8) and ``json``. Any object with a ``decode(data: bytes) -> object``
method is a codec too; name it as ``module:attribute``.

A codec that fails raises :class:`~streamcp.errors.DecodeError`; a
tombstone (no value) is refused by ``text`` and ``json`` unless the handler
accepts tombstones, and passed as ``None`` by ``bytes``.
"""

from __future__ import annotations

import importlib
import json
from typing import Any, Protocol, runtime_checkable

from streamcp.errors import ConfigError


@runtime_checkable
class Codec(Protocol):
    """Decodes one key or value; raises any exception for bad input."""

    name: str
    tombstones: bool

    def decode(self, data: bytes) -> Any: ...


class BytesCodec:
    name = "bytes"
    tombstones = True

    def decode(self, data: bytes) -> Any:
        return data


class TextCodec:
    name = "text"
    tombstones = False

    def decode(self, data: bytes) -> Any:
        return data.decode("utf-8")


class JsonCodec:
    name = "json"
    tombstones = False

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


class _Tolerant:
    """A codec that lets tombstones through as ``None``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.tombstones = True

    def decode(self, data: bytes) -> Any:
        return self._inner.decode(data)


_BUILT_IN: dict[str, type[Any]] = {
    "bytes": BytesCodec,
    "text": TextCodec,
    "json": JsonCodec,
}


def codec_by_name(name: str | Any, field: str, *, tombstones: bool = False) -> Codec:
    """A codec from a built-in name, ``module:attribute``, or an object."""
    codec: Any
    if not isinstance(name, str):
        codec = name
    elif name in _BUILT_IN:
        codec = _BUILT_IN[name]()
    elif ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            codec = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"handler.{field}_codec", f"cannot load codec {name!r}: {exc}"
            ) from exc
        if isinstance(codec, type):
            codec = codec()
    else:
        raise ConfigError(
            f"handler.{field}_codec",
            f"unknown codec {name!r}; expected bytes, text, json or module:attribute",
        )
    if not callable(getattr(codec, "decode", None)):
        raise ConfigError(f"handler.{field}_codec", f"{name!r} has no decode method")
    if tombstones and not getattr(codec, "tombstones", False):
        return _Tolerant(codec)
    if not hasattr(codec, "tombstones"):
        return _Tolerant(codec) if tombstones else _with_defaults(codec)
    result: Codec = codec
    return result


def _with_defaults(codec: Any) -> Codec:
    wrapper = _Tolerant(codec)
    wrapper.tombstones = False
    return wrapper
