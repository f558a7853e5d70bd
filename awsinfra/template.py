"""A CloudFormation template: loaded with its short-form tags, and its intrinsic functions resolved
against a deployed stack (Ref, GetAtt, Sub, Join, If and conditions, Equals/Not/And/Or, Select,
Split, FindInMap, Base64, GetAZs)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import StackError


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (``!Ref X`` -> ``{"Ref": "X"}``, ``!Sub`` -> ``Fn::Sub``)."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
    name = "Ref" if suffix == "Ref" else "Condition" if suffix == "Condition" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


def parse_template(text: str) -> dict:
    """A template's text (YAML with short-form tags, or JSON) -> its long-form dict."""
    return yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass


def load_template(path: Path) -> dict:
    return parse_template(Path(path).read_text())


# ---------------------------------------------------------------- the resolver

_NO_VALUE = object()  # AWS::NoValue: the property (or list item) is left out
Attribute = Callable[[str, str, str], str]  # (logical id, type, attribute name) -> value


@dataclass
class Resolver:
    """Evaluates a template's intrinsic functions against a deployed stack: parameters, pseudo
    parameters, physical ids (``Ref``) and attributes (``GetAtt``, through ``attribute``)."""

    template: dict
    parameters: dict[str, str]
    physical: dict[str, str]  # logical id -> physical id
    pseudo: dict[str, str]
    attribute: Attribute

    def condition(self, name: str) -> bool:
        conditions = self.template.get("Conditions", {})
        if name not in conditions:
            raise StackError(f"template: condition {name}: not in Conditions ({', '.join(map(str, conditions))})")
        return bool(self.value(conditions[name]))

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical:
            return self.physical[name]
        raise StackError(f"template: Ref {name}: not deployed")

    def get_att(self, logical: str, attribute: str) -> str:
        resources = self.template["Resources"]
        if logical not in resources:
            raise StackError(f"template: GetAtt {logical}.{attribute}: no resource {logical}")
        return self.attribute(logical, resources[logical]["Type"], attribute)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(n) for n in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            function = _FUNCTIONS.get(key)
            if function is not None:
                return function(self, arg)
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not _NO_VALUE}

    def sub(self, text: str, extra: dict[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match[1]
            if name in extra:
                return str(extra[name])
            if "." in name and not name.startswith("AWS::"):
                return str(self.get_att(*name.split(".", 1)))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}!]+)\}", replace, text)

    def find_in_map(self, arg: list) -> Any:
        mapping, top, second = (self.value(a) for a in arg)
        try:
            return self.template["Mappings"][mapping][top][second]
        except KeyError:
            raise StackError(f"template: FindInMap {mapping}/{top}/{second}: no such entry") from None


def _sub(resolver: Resolver, arg: Any) -> str:
    if isinstance(arg, str):
        return resolver.sub(arg, {})
    return resolver.sub(arg[0], {k: resolver.value(v) for k, v in arg[1].items()})


_FUNCTIONS: dict[str, Callable[[Resolver, Any], Any]] = {
    "Ref": lambda r, a: _NO_VALUE if a == "AWS::NoValue" else r.ref(a),
    "Fn::GetAtt": lambda r, a: r.get_att(*(a if isinstance(a, list) else a.split(".", 1))),
    "Fn::Sub": _sub,
    "Fn::Join": lambda r, a: str(a[0]).join(str(v) for v in r.value(a[1])),
    "Fn::If": lambda r, a: r.value(a[1] if r.condition(a[0]) else a[2]),
    "Fn::Equals": lambda r, a: str(r.value(a[0])) == str(r.value(a[1])),
    "Fn::Not": lambda r, a: not r.value(a[0]),
    "Fn::And": lambda r, a: all(r.value(c) for c in a),
    "Fn::Or": lambda r, a: any(r.value(c) for c in a),
    "Fn::Select": lambda r, a: r.value(a[1])[int(r.value(a[0]))],
    "Fn::Split": lambda r, a: str(r.value(a[1])).split(a[0]),
    "Fn::FindInMap": lambda r, a: r.find_in_map(a),
    "Fn::Base64": lambda r, a: base64.b64encode(str(r.value(a)).encode()).decode(),
    "Fn::GetAZs": lambda r, a: [f"{r.value(a) or r.pseudo.get('AWS::Region', 'us-east-1')}{z}" for z in "abc"],
    "Condition": lambda r, a: r.condition(a),
}
