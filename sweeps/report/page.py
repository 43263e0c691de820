"""The study report as one HTML page: what an artifact viewer shows without the files beside
it (the MLflow UI opens ``report.html`` alone)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import markdown

PAGE_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em}"
              "table{border-collapse:collapse;margin:.5em 0}"
              "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
              "img{max-width:100%}")


def as_html(text: str, folder: Path, title: str) -> str:
    """``report.md`` as one HTML page, its PNGs inlined as data URIs (an artifact viewer
    shows the page alone, without the files beside it)."""
    body = markdown.markdown(text, extensions=["tables"])

    def inline(match: re.Match[str]) -> str:
        data = base64.b64encode((folder / match.group(1)).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([\w.-]+\.png)"', inline, body)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Study report: "
            f"{title}</title><style>{PAGE_STYLE}</style></head><body>{body}</body></html>\n")
