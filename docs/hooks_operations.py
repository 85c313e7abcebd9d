"""mkdocs hook: the operations reference generated from the server's code at build time.

`guides/operations.md` holds two marker lines; `on_page_markdown` replaces them with the table of
every metric a server exports and the table of every structured log event it writes
(omad.serve.reference). A page that loses a marker fails the build.
"""

from __future__ import annotations

from mkdocs.exceptions import PluginError

PAGE = "guides/operations.md"
MARKERS = {
    "<!-- generated: metrics -->": "metrics_markdown",
    "<!-- generated: log-events -->": "log_events_markdown",
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    from omad.serve import reference

    for marker, build in MARKERS.items():
        if marker not in markdown:
            raise PluginError(f"{PAGE} lost its marker line {marker!r}: the generated reference has no place")
        try:
            table = getattr(reference, build)()
        except reference.ReferenceError as err:
            raise PluginError(str(err)) from None
        markdown = markdown.replace(marker, table)
    return markdown
