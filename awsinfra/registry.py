"""The per-resource-type registries of the layer: completers (create what CloudFormation skipped,
through the service's own API), deleters (remove what a completer created) and attribute getters
(``!GetAtt`` read through the service's API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from botocore.exceptions import ClientError

from .errors import StackError
from .template import Attribute, Resolver

AttributeGetter = Callable[[Any, str], str]  # (aws, physical id) -> value
ATTRIBUTES: dict[tuple[str, str], AttributeGetter] = {}


def attribute(kind: str, name: str) -> Callable[[AttributeGetter], AttributeGetter]:
    """Register how ``!GetAtt <resource of kind>.<name>`` is read through the service's API."""

    def register(getter: AttributeGetter) -> AttributeGetter:
        ATTRIBUTES[(kind, name)] = getter
        return getter

    return register


def attribute_of(aws: Any, physical: dict[str, str]) -> Attribute:
    def read(logical: str, kind: str, name: str) -> str:
        pid = physical.get(logical)
        if pid is None:
            raise StackError(f"template: {logical}.{name}: {logical} is not deployed")
        getter = ATTRIBUTES.get((kind, name))
        if getter is None:
            raise StackError(f"template: GetAtt {logical}.{name} ({kind}) is not supported by awsinfra")
        return getter(aws, pid)

    return read


# ---------------------------------------------------------------- completers, per resource type


@dataclass(frozen=True)
class Completed:
    """What a completer found or did for one template resource.

    ``action``: ``present`` (nothing to do), ``created`` (made through its API: recorded, and removed
    by destroy through the type's deleter), ``updated`` (properties in ``applied`` set on a
    resource that existed) or ``skipped`` (deliberately not applied here; ``applied`` says why). ``parts``: (action, name) per thing when one resource covers several
    (a queue policy over two queues)."""

    physical_id: str
    action: Literal["present", "created", "updated", "skipped"] = "present"
    applied: tuple[str, ...] = ()
    parts: tuple[tuple[str, str], ...] = ()
    logical_id: str = ""
    kind: str = ""

    @property
    def changed(self) -> bool:
        return self.action in ("created", "updated")


CompleterFn = Callable[[Any, str, dict, Resolver], Completed]  # (aws, logical id, properties, resolver)
DeleterFn = Callable[[Any, str], str]  # (aws, physical id) -> "deleted" | "absent" | "kept (why)"
When = Literal["missing", "always", "offline"]


@dataclass(frozen=True)
class Completer:
    """``when``: ``missing`` runs when the stack has no physical id for the resource (skipped);
    ``always`` on every deploy (properties CloudFormation may ignore on a resource it did create);
    ``offline`` on a deployed resource only against a local stand-in (what its updates miss)."""

    fn: CompleterFn
    when: When = "missing"


COMPLETERS: dict[str, Completer] = {}
DELETERS: dict[str, DeleterFn] = {}


def completer(kind: str, when: When = "missing") -> Callable[[CompleterFn], CompleterFn]:
    """Register ``fn(aws, logical_id, props, resolver) -> Completed`` for resources of ``kind``."""

    def register(fn: CompleterFn) -> CompleterFn:
        COMPLETERS[kind] = Completer(fn, when)
        return fn

    return register


def deleter(kind: str) -> Callable[[DeleterFn], DeleterFn]:
    """Register ``fn(aws, physical_id) -> action`` removing a resource of ``kind`` a completer created."""

    def register(fn: DeleterFn) -> DeleterFn:
        DELETERS[kind] = fn
        return fn

    return register


def deleted_by_call(kind: str, service: str, method: str, arguments: Callable[[str], dict[str, Any]]) -> None:
    """Register the deleter of ``kind`` that is one call: ``service``'s ``method`` with ``arguments(physical id)``."""

    def delete(aws: Any, physical: str) -> str:
        getattr(aws(service), method)(**arguments(physical))
        return "deleted"

    deleter(kind)(delete)


def exists(call: Callable[[], Any]) -> bool:
    """Whether a describe/get call answers (a ``ClientError`` means no)."""
    try:
        call()
        return True
    except ClientError:
        return False
