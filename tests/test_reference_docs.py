"""The generated reference pages (issue #26 item 6) are what the code generates now."""

from __future__ import annotations

import pytest

from devtools import reference
from sagemaker_deepar.settings import variables_of
from sagemaker_deepar.training.hyperparameters import DeepARHyperparameters

pytestmark = pytest.mark.unit


def test_the_committed_pages_are_current():
    stale = reference.stale_pages()
    assert not stale, f"{[str(p) for p in stale]}: run `python -m devtools.reference` and commit the pages"
    assert reference.main(["--check"]) == 0


def test_a_page_that_differs_is_named(tmp_path, capsys):
    (tmp_path / "docs" / "reference").mkdir(parents=True)
    (tmp_path / reference.ENVIRONMENT_PAGE).write_text(reference.environment_page())
    (tmp_path / reference.HYPERPARAMETERS_PAGE).write_text("# Hyperparameters\n\nby hand\n")
    assert reference.stale_pages(tmp_path) == [reference.HYPERPARAMETERS_PAGE]


def test_every_hyperparameter_and_variable_is_documented_with_a_description():
    hyperparameters = reference.hyperparameters_page()
    for name, info in DeepARHyperparameters.model_fields.items():
        assert f"| `{name}` |" in hyperparameters and info.description, name
    environment = reference.environment_page()
    models = reference.settings_models()
    assert {m.__name__ for m in models} >= {"ServingEnvironment", "ModelSource", "FunctionSettings", "MlopsSettings"}
    for model in models:
        assert model.__doc__, model
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"
            assert all(f"`{v}`" in environment for v in variables_of(info, name))


def test_every_module_that_defines_a_settings_model_is_on_the_page():
    root = reference.REPO
    defining = {
        str(path.relative_to(root))[:-3].replace("/", ".")
        for package in ("sagemaker_deepar", "serverless", "mlops", "ingestion", "ecs", "awsinfra", "evaluation")
        for path in (root / package).rglob("*.py")
        if "(EnvironmentSettings)" in path.read_text(encoding="utf-8")
    }
    assert defining and defining <= set(reference.SETTINGS_MODULES), defining - set(reference.SETTINGS_MODULES)
