"""mkdocs hook: reference text generated from the code at build time, so it cannot drift.

- `reference/cli.md` and `reference/config.md` each hold one marker line; `on_page_markdown` replaces
  it with text built from `omad.cli.build_parser` (every subcommand's `--help`) and from the fields of
  `omad.train.config.TrainConfig`. A page without its marker fails the build, so the reference cannot
  silently stop being generated.
- On any page, `<!-- generated: docstring MODULE -->` becomes MODULE's docstring in a text block
  (the file layouts in `reference/formats.md`).
- A page that includes a generated file from bench/results (`--8<-- "PATH"`) shows the figures that
  file links relative to itself: `on_files` publishes every PNG below the included file's folder
  beside the including page, so the links resolve on the site as they do in the repository.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import annotated_types
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

HELP_COLUMNS = "100"  # argparse wraps help text to $COLUMNS


def cli_markdown() -> str:
    from omad.cli import COMMANDS, build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parts = ["## `omad`", "", "```text", build_parser().format_help().rstrip(), "```", ""]
        for name in COMMANDS:
            parser = build_parser(name)
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parts += [f"## `omad {name}`", "", "```text", sub.choices[name].format_help().rstrip(), "```", ""]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(parts)


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: `int`, `list[int]`, `'mean' | 'min'`, `float | None`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def constraint_text(metadata: list[Any]) -> str:
    """Pydantic's bounds on a field (gt, ge, lt, le, min_length) as `> 0, <= 1`."""
    out = []
    for item in metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                out.append(f"{symbol} {getattr(item, attr)}")
        if isinstance(item, annotated_types.MinLen):
            out.append(f"at least {item.min_length} " + ("entry" if item.min_length == 1 else "entries"))
    return ", ".join(out)


def cell(text: str) -> str:
    """Plain text for a table cell: a pipe would end the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def code_cell(text: str) -> str:
    """A code span for a table cell: the table extension does not split rows inside backticks."""
    return f"`{text}`"


def config_markdown() -> str:
    """One row per config field: which algorithms take it, its type, default, HARL presets and bounds."""
    from omad.train import config

    # One pydantic model per algorithm; a config module with a single model serves every algorithm.
    classes = getattr(config, "CONFIG_CLASSES", None) or dict.fromkeys(config.ALGOS, config.TrainConfig)
    field_presets = getattr(config, "field_presets", lambda name: {})
    names = list(dict.fromkeys(name for cls in classes.values() for name in cls.model_fields))
    rows = [
        "| field | flag | algorithms | type | default | HARL presets | constraint | description |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        takers = [algo for algo, cls in classes.items() if name in cls.model_fields]
        field = classes[takers[0]].model_fields[name]
        if name == "algo" and hasattr(config, "TrainConfigBase"):  # each model pins its own algo
            field = config.TrainConfigBase.model_fields[name]
        default = field.get_default(call_default_factory=True)
        presets = "; ".join(f"{algo}: {value}" for algo, value in field_presets(name).items())
        rows.append(
            "| "
            + " | ".join(
                [
                    f"`{name}`",
                    f"`--{name.replace('_', '-')}`",
                    "all" if len(takers) == len(classes) else ", ".join(takers),
                    code_cell(type_name(field.annotation)),
                    code_cell(repr(default)),
                    cell(presets),
                    cell(constraint_text(field.metadata)),
                    cell(field.description or ""),
                ]
            )
            + " |"
        )
    return "\n".join(rows) + "\n"


GENERATED: dict[str, tuple[str, Callable[[], str]]] = {
    "reference/cli.md": ("<!-- generated: cli -->", cli_markdown),
    "reference/config.md": ("<!-- generated: config -->", config_markdown),
}


DOCSTRING_MARKER = re.compile(r"<!-- generated: docstring ([\w.]+) -->")


def docstring_block(match: re.Match) -> str:
    module = importlib.import_module(match.group(1))
    doc = inspect.getdoc(module)
    if not doc:
        raise PluginError(f"{module.__name__} has no docstring to show")
    return "```text\n" + doc + "\n```"


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = DOCSTRING_MARKER.sub(docstring_block, markdown)
    entry = GENERATED.get(page.file.src_uri)
    if entry is None:
        return markdown
    marker, build = entry
    if marker not in markdown:
        raise PluginError(f"{page.file.src_uri} lost its marker line {marker!r}: the generated reference has no place")
    return markdown.replace(marker, build())


SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)


def on_files(files, config):
    """Publish the figures of every included file beside the page that includes it."""
    repo = Path(config["config_file_path"]).parent
    for page in list(files.documentation_pages()):
        page_dir = PurePosixPath(page.src_uri).parent
        for included in SNIPPET.findall(Path(page.abs_src_path).read_text()):
            folder = (repo / included).parent
            for figure in sorted(folder.rglob("*.png")):
                uri = str(page_dir / figure.relative_to(folder).as_posix())
                if files.get_file_from_path(uri) is None:
                    files.append(File.generated(config, uri, abs_src_path=str(figure)))
    return files
