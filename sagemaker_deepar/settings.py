"""Settings from the environment, one style for the whole project (issue #26 item 4).

Every variable a component reads is a field of a pydantic-settings model (``EnvironmentSettings``):
its name is the field's alias, its type, bounds, default and description are the field's. A model is
parsed once, by ``from_env(mapping)``, from the mapping an entry point hands it (``os.environ`` in
production, a dict in tests), so nothing reads the process environment behind the caller's back and
nothing is read at import time. A value that cannot be used is a ``SettingsError`` naming the
variable, the value and what is allowed: ``environment variable DEEPAR_KEEPALIVE='0': should be
greater than or equal to 1``. ``python -m devtools.reference`` writes docs/reference/environment.md
from these models.

Standard library and pydantic only: the serverless bundles carry this module (serverless/package.py).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, TypeVar

from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from .errors import UserError

Settings = TypeVar("Settings", bound="EnvironmentSettings")
MAX_SHOWN_VALUE = 80  # characters of a bad value repeated in an error message


class SettingsError(UserError, ValueError):
    """One or more variables that cannot be used; the message names each (variable=value: why)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def variables_of(info: FieldInfo, field_name: str) -> list[str]:
    """The environment variables a field reads, in order of precedence (the first set one wins)."""
    alias = info.validation_alias or info.alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [str(alias)] if alias else [field_name.upper()]


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' own environment source, over the mapping an entry point handed in."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        self._mapping = env
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, Optional[str]]:
        blank_free = {k: v for k, v in self._mapping.items() if isinstance(v, str) and v.strip()}
        return parse_env_vars(blank_free, True, True, None)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else f"{text[:MAX_SHOWN_VALUE]}... ({len(text)} characters)"


def _reason(message: str) -> str:
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:] if message.startswith("Input ") else message


class EnvironmentSettings(BaseSettings):
    """Base of every settings model: frozen, unknown variables ignored, read only from ``from_env``'s mapping."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True, populate_by_name=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what from_env passes: a model never reads os.environ (or a .env file) by itself.
        return (init_settings,)

    @classmethod
    def from_env(cls: type[Settings], env: Mapping[str, str]) -> Settings:
        """The settings in ``env`` (blank values count as unset); ``SettingsError`` naming every bad variable."""
        values = _MappingSource(cls, env)()
        try:
            return cls(**values)
        except ValidationError as error:
            raise SettingsError(cls._problems(error, env)) from None

    @classmethod
    def defaults(cls: type[Settings]) -> Settings:
        """Every field at its default (what an empty environment gives)."""
        return cls.from_env({})

    @classmethod
    def _problems(cls, error: ValidationError, env: Mapping[str, str]) -> list[str]:
        by_variable: dict[str, str] = {}
        for name, info in cls.model_fields.items():
            variables = variables_of(info, name)
            present = [v for v in variables if str(env.get(v, "")).strip()]
            for variable in [name, *variables]:
                by_variable[variable] = present[0] if present else variables[0]
        problems = []
        for item in error.errors():
            key = str(item["loc"][0]) if item["loc"] else ""
            found = by_variable.get(key)
            if found is None:  # a model-level check: its message names its variables itself
                problems.append(_reason(item["msg"]))
            elif item["type"] == "missing":
                problems.append(f"environment variable {found} is required but not set")
            else:
                problems.append(f"environment variable {found}={_shown(env.get(found))}: {_reason(item['msg'])}")
        return problems
