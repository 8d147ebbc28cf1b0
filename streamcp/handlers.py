"""Handler plugins: finding them, checking their options, one lifecycle.

A handler is one of:

* a function ``handle(event)``, plain or ``async def``;
* a class whose instances have ``handle(event)`` and/or
  ``handle_batch(events)`` (plain or ``async def``), and optionally
  ``setup()`` and ``close()``.

A class takes its options in its constructor. When it has an ``Options``
attribute that is a dataclass, the configured options are checked against it
(unknown, missing and mistyped fields are refused, naming the field) and the
constructor receives one ``Options`` instance; otherwise it receives them as
keyword arguments. A function takes no options.

``handle_batch`` receives events of one partition in offset order. It
returns when every event succeeded; it raises when the batch failed; it
raises :class:`BatchFailed` to say that the events before an offset
succeeded and the one at that offset failed.

Handlers are found by name: an entry point in the group
``streamcp.handlers``, or ``module:attribute``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import threading
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from streamcp.codecs import codec_by_name
from streamcp.errors import ConfigError, HandlerNotFound
from streamcp.events import Event
from streamcp.failures import FailurePolicy

ENTRY_POINT_GROUP = "streamcp.handlers"


class BatchFailed(Exception):  # reads as the outcome it reports
    """Raised by ``handle_batch``: events before ``offset`` succeeded.

    The event at ``offset`` failed; chain the cause with ``raise ... from``.
    """

    def __init__(self, offset: int, message: str = "") -> None:
        super().__init__(message or f"batch failed at offset {offset}")
        self.offset = offset


@runtime_checkable
class Handler(Protocol):
    """The lifecycle every loaded handler is adapted to."""

    name: str
    batches: bool
    policy: FailurePolicy

    def setup(self) -> None: ...

    def handle(self, event: Event) -> None: ...

    def handle_batch(self, events: Sequence[Event]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class HandlerInfo:
    """A discovered handler, for listings."""

    name: str
    source: str
    target: Any


def discover() -> list[HandlerInfo]:
    """Every handler registered under the ``streamcp.handlers`` entry point."""
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        found.append(HandlerInfo(ep.name, f"entry point of {dist} ({ep.value})", ep))
    return sorted(found, key=lambda info: info.name)


def resolve(name: str, *, field_name: str = "handler.name") -> Any:
    """The object a handler name points at; raises :class:`HandlerNotFound`."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise HandlerNotFound(
                field_name, f"cannot import module {module_name!r}: {exc}"
            ) from exc
        target: Any = module
        for part in attribute.split("."):
            if not hasattr(target, part):
                raise HandlerNotFound(
                    field_name, f"module {module_name!r} has no attribute {attribute!r}"
                )
            target = getattr(target, part)
        return target
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return ep.load()
    known = ", ".join(info.name for info in discover()) or "none"
    raise HandlerNotFound(
        field_name,
        f"no handler {name!r}: not an entry point of group {ENTRY_POINT_GROUP!r} "
        f"(known: {known}) nor a module:attribute",
    )


def load(
    name: str,
    options: Mapping[str, Any],
    *,
    field_name: str = "handler",
    policy: Mapping[str, Any] | None = None,
) -> Handler:
    """Find, check and build a handler; nothing connects yet.

    ``policy`` holds failure-handling settings from the configuration
    (``retry_attempts``, ``on_failure``, codecs, ...). Raises
    :class:`~streamcp.errors.ConfigError` (or :class:`HandlerNotFound`)
    naming the field for any problem.
    """
    target = resolve(name, field_name=f"{field_name}.name")
    handler = build(target, options, name=name, field_name=field_name)
    handler.policy = failure_policy(target, policy or {}, field_name)
    return handler


def failure_policy(
    target: Any, settings: Mapping[str, Any], field_name: str = "handler"
) -> FailurePolicy:
    """The handler's policy: configuration, else what the class declares."""

    def pick(name: str, default: Any) -> Any:
        if name in settings:
            return settings[name]
        return getattr(target, name, default)

    tombstones = pick("tombstones", False)
    if not isinstance(tombstones, bool):
        raise ConfigError(
            f"{field_name}.tombstones", f"must be true or false, got {tombstones!r}"
        )
    non_retryable = getattr(target, "non_retryable", ())
    try:
        return FailurePolicy(
            attempts=pick("retry_attempts", 3),
            backoff_s=pick("retry_backoff_s", 0.2),
            max_backoff_s=pick("retry_max_backoff_s", 10.0),
            on_failure=pick("on_failure", "pause"),
            dead_letter_topic=pick("dead_letter_topic", None),
            timeout_s=pick("timeout_s", None),
            key_codec=codec_by_name(pick("key_codec", "bytes"), "key"),
            value_codec=codec_by_name(
                pick("value_codec", "bytes"), "value", tombstones=tombstones
            ),
            non_retryable=tuple(non_retryable),
        )
    except ConfigError as exc:
        field = exc.field.replace("handler.", f"{field_name}.", 1)
        raise ConfigError(field, exc.message) from exc


def build(
    target: Any,
    options: Mapping[str, Any],
    *,
    name: str = "",
    field_name: str = "handler",
) -> Handler:
    """Adapt a function, class or instance to the :class:`Handler` lifecycle."""
    label = name or getattr(target, "__qualname__", type(target).__name__)
    if inspect.isclass(target):
        instance = _instantiate(target, options, field_name)
        return _ObjectHandler(label, instance, field_name)
    if callable(target) and not _has_handle(target):
        if options:
            raise ConfigError(
                f"{field_name}.options",
                f"handler {label!r} is a function and takes no options, "
                f"got {sorted(options)!r}",
            )
        return _FunctionHandler(label, target)
    if _has_handle(target):
        return _ObjectHandler(label, target, field_name)
    raise ConfigError(
        f"{field_name}.name",
        f"{label!r} is neither a function nor a class with handle or handle_batch",
    )


def options_schema(target: Any) -> list[tuple[str, str, str]]:
    """(name, type, default) of each option a handler class declares.

    The fields of its ``Options`` dataclass, or else the keyword parameters
    of its constructor; none for a function or an instance.
    """
    if not inspect.isclass(target):
        return []
    options_cls = getattr(target, "Options", None)
    if not dataclasses.is_dataclass(options_cls):
        return _constructor_options(target)
    hints = typing.get_type_hints(options_cls)
    rows = []
    for f in dataclasses.fields(options_cls):
        default = "required"
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        rows.append((f.name, _type_name(hints.get(f.name, Any)), default))
    return rows


def _constructor_options(cls: type[Any]) -> list[tuple[str, str, str]]:
    try:
        signature = inspect.signature(cls)
        hints = typing.get_type_hints(cls.__init__)
    except (TypeError, ValueError, NameError):
        return []
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        (
            p.name,
            _type_name(hints.get(p.name, Any)),
            "required" if p.default is inspect.Parameter.empty else repr(p.default),
        )
        for p in signature.parameters.values()
        if p.kind in named
    ]


def _has_handle(target: Any) -> bool:
    return hasattr(target, "handle") or hasattr(target, "handle_batch")


def _instantiate(cls: type[Any], options: Mapping[str, Any], field_name: str) -> Any:
    if not _has_handle(cls):
        raise ConfigError(
            f"{field_name}.name",
            f"class {cls.__qualname__!r} has neither handle nor handle_batch",
        )
    options_cls = getattr(cls, "Options", None)
    if dataclasses.is_dataclass(options_cls) and isinstance(options_cls, type):
        return cls(check_options(options_cls, options, f"{field_name}.options"))
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"{field_name}.options", str(exc)) from exc
    return cls(**options)


def check_options(options_cls: type[Any], raw: Mapping[str, Any], where: str) -> Any:
    """An ``options_cls`` instance from ``raw``, each field checked."""
    hints = typing.get_type_hints(options_cls)
    known = {f.name: f for f in dataclasses.fields(options_cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"{where}.{key}",
                f"unknown option; expected one of {', '.join(sorted(known)) or 'none'}",
            )
    values = {}
    for f in known.values():
        if f.name not in raw:
            no_default = f.default is dataclasses.MISSING
            if no_default and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}.{f.name}", "is missing (required option)")
            continue
        values[f.name] = _coerce(
            raw[f.name], hints.get(f.name, Any), f"{where}.{f.name}"
        )
    try:
        return options_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(where, str(exc)) from exc


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type hint ``hint`` (ints pass as floats)."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, hint, where)
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(
            where, f"expected one of {typing.get_args(hint)!r}, got {value!r}"
        )
    if origin in (list, tuple, Sequence):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(where, f"expected a list, got {value!r}")
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    wrong_bool = isinstance(value, bool) and hint is not bool
    if isinstance(hint, type) and (wrong_bool or not isinstance(value, hint)):
        raise ConfigError(where, f"expected {hint.__name__}, got {value!r}")
    return value


def _coerce_union(value: Any, hint: Any, where: str) -> Any:
    for option in typing.get_args(hint):
        if option is type(None) and value is None:
            return None
        try:
            return _coerce(value, option, where)
        except ConfigError:
            continue
    raise ConfigError(where, f"expected {_type_name(hint)}, got {value!r}")


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _run(result: Any) -> Any:
    """Await ``result`` on this thread's event loop when it is a coroutine."""
    if inspect.isawaitable(result):
        return _event_loop().run_until_complete(result)
    return result


_loops: dict[int, asyncio.AbstractEventLoop] = {}


def _event_loop() -> asyncio.AbstractEventLoop:
    # One event loop per worker thread, made on first use, for async handlers.
    ident = threading.get_ident()
    loop = _loops.get(ident)
    if loop is None:
        loop = asyncio.new_event_loop()
        _loops[ident] = loop
    return loop


class _FunctionHandler:
    batches = False

    def __init__(self, name: str, function: Callable[[Event], Any]) -> None:
        self.name = name
        self.policy = failure_policy(function, {})
        self._function = function
        self.per_event: Callable[[Event], Any] | None = (
            None if inspect.iscoroutinefunction(function) else function
        )

    def setup(self) -> None:
        return None

    def handle(self, event: Event) -> None:
        _run(self._function(event))

    def handle_batch(self, events: Sequence[Event]) -> None:
        for event in events:
            _run(self._function(event))

    def close(self) -> None:
        return None


class _ObjectHandler:
    def __init__(self, name: str, instance: Any, field_name: str) -> None:
        self.name = name
        self.instance = instance
        self.policy = failure_policy(instance, {}, field_name)
        self._setup = getattr(instance, "setup", None)
        self._close = getattr(instance, "close", None)
        self._handle = getattr(instance, "handle", None)
        self._handle_batch = getattr(instance, "handle_batch", None)
        self.batches = self._handle_batch is not None
        sync_handle = self._handle is not None and not inspect.iscoroutinefunction(
            self._handle
        )
        # Workers call a plain per-event handle directly, skipping _run.
        self.per_event: Callable[[Event], Any] | None = (
            self._handle if sync_handle and self._handle_batch is None else None
        )
        for hook in ("setup", "close", "handle", "handle_batch"):
            method = getattr(instance, hook, None)
            if method is not None and not callable(method):
                raise ConfigError(
                    f"{field_name}.name", f"{name}.{hook} is not callable"
                )

    def setup(self) -> None:
        if self._setup is not None:
            _run(self._setup())

    def handle(self, event: Event) -> None:
        if self._handle is not None:
            _run(self._handle(event))
        else:
            self.handle_batch([event])

    def handle_batch(self, events: Sequence[Event]) -> None:
        if self._handle_batch is not None:
            _run(self._handle_batch(events))
            return
        for event in events:
            _run(self._handle(event))  # type: ignore[misc]  # checked at build

    def close(self) -> None:
        if self._close is not None:
            _run(self._close())
