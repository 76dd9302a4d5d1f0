"""The CLI matches the service: its upload commands take every field and every value of the API's
multipart forms (read from the app's own /openapi.json), each option described as the form describes
the field, `jobs create` has a described flag for every scalar field of the job schema and builds the
same body as before from them, `search create` describes every key of its KEY=VALUE sections
(targets, budget, space) with the schema's description and default, and a narrow terminal gets one
block of `key: value` lines per row of a list."""

from __future__ import annotations

import io
import json

import click
import pytest
import typer
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from kdserve.cli import app, render
from kdserve.cli import jobs as jobs_cli
from kdserve.cli import searches as searches_cli
from kdserve.cli.schema_flags import JOB_FLAGS
from kdserve.client import Page
from kdserve.service.app import create_app
from kdserve.service.schemas import DatasetOut
from kdserve.service.settings import Settings

UPLOADS = {"/v1/teachers": ("teachers", "upload"), "/v1/datasets": ("datasets", "upload")}


def command(*path: str) -> click.Command:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def options(cmd: click.Command) -> dict[str, click.Parameter]:
    """The command's parameters by the form/body field name they stand for (`--text-column`: text_column)."""
    found = {}
    for param in cmd.params:
        for opt in param.opts:
            found[opt.lstrip("-").replace("-", "_")] = param
    return found


@pytest.fixture(scope="module")
def openapi(tmp_path_factory):
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("data"))).openapi()


def shown(help_text: str | None) -> str:
    """An option's help as --help prints it: rich markup (the escapes) undone, white space as one space."""
    return " ".join(Text.from_markup(help_text or "").plain.split())


def form(openapi: dict, path: str) -> dict:
    return openapi["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]


@pytest.mark.parametrize("path", UPLOADS)
def test_upload_commands_take_every_form_field_and_value_of_the_api(openapi, path):
    cmd = command(*UPLOADS[path])
    params = options(cmd)
    params["file"] = params.pop("path")  # the upload's file is the command's argument
    fields = form(openapi, path)["properties"]
    assert set(fields) - set(params) == set(), f"`kdserve {' '.join(UPLOADS[path])}` lacks form fields"
    assert set(params) - set(fields) - {"json", "help"} == set(), "an option that is no form field"
    for name, spec in fields.items():
        help_text = params[name].help or ""
        assert help_text.strip(), f"{name} has no help"
        for value in spec.get("enum", []):
            assert value in help_text, f"{name}: {value!r} (accepted by the API) is not in the help: {help_text}"
        if "default" in spec:
            assert f"default: {spec['default']}" in help_text, f"{name}: the API's default is not in the help"
        if name != "file" and "description" in spec:  # the argument PATH describes each format instead
            assert " ".join(spec["description"].split()) in shown(help_text), \
                f"--{name.replace('_', '-')}: the form's description is not in the help: {help_text!r}"
    file_help = params["file"].help
    for value in fields["format"]["enum"]:  # the argument describes every format the API takes
        assert f"{value}:" in file_help, f"{value!r} is not described in the file argument's help"
        assert value in command(UPLOADS[path][0]).help


# fields of POST /v1/jobs with flags of their own, not made from the schema
BY_HAND = {"teacher_id": "teacher", "dataset_id": "dataset", "validation_dataset_id": "validation_dataset",
           "quantize": "quantize", "metadata": "metadata"}


def test_every_job_schema_field_has_a_described_flag_with_its_default(openapi):
    cmd = command("jobs", "create")
    params = options(cmd)
    schemas = openapi["components"]["schemas"]
    for section in ("TrainingSpec", "TextSpec"):  # every field of these is a flag
        for name, spec in schemas[section]["properties"].items():
            assert name in params, f"{section}.{name} has no `jobs create` flag"
            help_text = params[name].help or ""
            assert "accepts: " in help_text and "default: " in help_text, f"{name}: {help_text!r}"
            assert spec.get("description", "") in help_text
            for value in spec.get("enum", []):
                assert value in help_text
    made = {(flag.model.__name__, flag.name) for flag in JOB_FLAGS}
    for section in ("JobCreate", "ExportSpec"):  # every field but sections (student, …) and constants (onnx)
        for name, spec in schemas[section]["properties"].items():
            if name in BY_HAND:
                assert params[BY_HAND[name]].help
            elif "$ref" not in json.dumps(spec) and "const" not in spec:
                assert (section, name) in made and params[name].help, f"{section}.{name} has no `jobs create` flag"
    every = [opt for param in cmd.params for opt in param.opts]
    assert len(every) == len(set(every)), "two flags of the same name"


def test_search_create_describes_every_key_of_its_sections_with_its_default(openapi):
    params = options(command("search", "create"))
    schemas = openapi["components"]["schemas"]
    for section, option in (("SearchTargets", "target"), ("SearchBudget", "budget"), ("SearchSpace", "space")):
        keys = {}  # the help's paragraphs after the first, `name (or alias): text`, by name
        for paragraph in (params[option].help or "").split("\n\n")[1:]:
            key, _, text = shown(paragraph).partition(": ")
            keys[key.split(" (or ")[0]] = text
        for name, spec in schemas[section]["properties"].items():
            assert name in keys, f"{section}.{name} is not in the help of --{option}: {params[option].help!r}"
            assert " ".join(spec.get("description", "").split()) in keys[name], f"{section}.{name}: {keys[name]!r}"
            default = spec.get("default")
            assert f"default: {default if isinstance(default, str) else json.dumps(default)}" in keys[name], \
                f"{section}.{name}: the schema's default is not in the help: {keys[name]!r}"
        assert set(keys) == set(schemas[section]["properties"]), f"--{option} lists a key that is no field"
    assert shown(schemas["SearchSpace"]["properties"]["methods"]["description"]) in shown(params["method"].help)
    for name in ("validation_split", "seed"):  # the body's scalars are flags of their own
        spec = schemas["SearchCreate"]["properties"][name]
        assert spec.get("description", "") in params[name].help and f"default: {spec['default']}" in params[name].help


class FakeResource:
    """kd.jobs or kd.searches: `create` keeps the body it is sent and answers a queued resource."""

    def __init__(self, prefix: str):
        self.prefix, self.bodies = prefix, []

    def create(self, body, idempotency_key=None):
        self.bodies.append(body)
        return {"id": f"{self.prefix}_" + "0" * 24, "status": "queued"}


class FakeClient:
    def __init__(self):
        self.jobs, self.searches = FakeResource("job"), FakeResource("srch")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def fake(monkeypatch):
    kd = FakeClient()
    for module in (jobs_cli, searches_cli):
        monkeypatch.setattr(module, "client", lambda ctx: kd)
    return kd


@pytest.fixture
def sent(fake):
    return fake.jobs.bodies


def test_job_flags_build_the_body_over_the_file(sent, tmp_path):
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"dataset_id": "ds_x", "training": {"epochs": 50, "batch_size": 128}}))
    result = CliRunner().invoke(app, [
        "jobs", "create", "--file", str(spec), "--teacher", "tch_x", "--student", "mlp", "--method", "kd",
        "--param", "temperature=4", "--epochs", "6", "--lr", "0.005", "--seed", "3", "--device", "cpu",
        "--grad-clip-norm", "null", "--standardize-inputs", "true", "--early-stopping-patience", "auto",
        "--validation-split", "0.2", "--baseline", "true", "--opset", "17", "--quantize", "int8",
        "--max-length", "64", "--metadata", "team=cli", "--json"])
    assert result.exit_code == 0, result.output
    assert sent == [{
        "dataset_id": "ds_x", "teacher_id": "tch_x", "validation_split": 0.2, "baseline": True,
        "student": {"architecture": "mlp"}, "method": {"name": "kd", "params": {"temperature": 4}},
        "training": {"epochs": 6, "batch_size": 128, "learning_rate": 0.005, "seed": 3, "device": "cpu",
                     "grad_clip_norm": None, "standardize_inputs": True, "early_stopping_patience": "auto"},
        "export": {"opset": 17, "quantize": ["int8"]}, "text": {"max_length": 64}, "metadata": {"team": "cli"}}]


def test_search_flags_build_the_body_over_the_file(fake, tmp_path):
    spec = tmp_path / "search.json"
    spec.write_text(json.dumps({"dataset_id": "ds_x", "targets": {"batch_size": 64}, "budget": {"trials": 10}}))
    result = CliRunner().invoke(app, [
        "search", "create", "--file", str(spec), "--teacher", "tch_x", "--target", "latency_ms=2", "--target",
        "accuracy=0.97", "--budget", "parallel=4", "--method", "kd", "--method", "dkd", "--space",
        "learning_rate=[0.001,0.01]", "--seed", "3", "--validation-split", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    assert fake.searches.bodies == [{
        "dataset_id": "ds_x", "teacher_id": "tch_x", "validation_split": 0.2, "seed": 3,
        "targets": {"batch_size": 64, "latency_ms": 2, "min_accuracy": 0.97}, "budget": {"trials": 10, "parallel": 4},
        "space": {"methods": ["kd", "dkd"], "learning_rate": [0.001, 0.01]}}]


@pytest.mark.parametrize("flag, value, says", [
    ("--epochs", "0", "greater than or equal to 1"), ("--device", "tpu", "should match pattern"),
    ("--optimizer", "rmsprop", "'adamw', 'adam' or 'sgd'"), ("--validation-split", "0.95", "less than 0.9")])
def test_a_job_flag_the_schema_refuses_is_a_usage_error_naming_it(sent, flag, value, says):
    result = CliRunner().invoke(app, ["jobs", "create", "--dataset", "ds_x", flag, value])
    assert result.exit_code == 2 and sent == []
    assert flag in result.output and says in " ".join(result.output.split()), result.output


def datasets_page(n: int) -> Page:
    rows = [DatasetOut(id=f"ds_{i:024x}", name=f"a rather long dataset name {i}", format="csv", sha256="0" * 64,
                       size_bytes=12345, num_rows=1797, feature_shape=[64], labeled=True, num_classes=10,
                       class_counts=None, created_at=1_700_000_000) for i in range(n)]
    return Page[DatasetOut](object="list", data=rows, has_more=False)


@pytest.mark.parametrize("columns", [60, 79])
def test_a_narrow_terminal_gets_one_block_per_row(monkeypatch, columns):
    buf = io.StringIO()
    monkeypatch.setattr(render, "out", Console(file=buf, width=columns, highlight=False))
    render.print_page(datasets_page(2), render.dataset_table, as_json=False)
    text = buf.getvalue()
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 2 and "┃" not in text and "│" not in text, text
    assert blocks[0].splitlines()[:3] == [f"id: ds_{0:024x}", "name: a rather long dataset name 0", "format: csv"]
    assert "rows: 1,797" in blocks[1] and f"id: ds_{1:024x}" in blocks[1]


def test_a_wide_terminal_gets_a_table():
    buf = io.StringIO()
    render.print_table(render.dataset_table(datasets_page(1).data), Console(file=buf, width=120))
    assert "┃" in buf.getvalue() and f"ds_{0:024x}" in buf.getvalue()
