"""Writing a result: the JSON that checks read and the Markdown people read, side by side in one directory."""
from __future__ import annotations

import json
from pathlib import Path


def write_json_and_markdown(out_dir: str | Path, stem: str, data, markdown: str, *, indent: int = 2) -> Path:
    """``out_dir/stem.json`` (``data``) and ``out_dir/stem.md`` (``markdown``); the directory is made. Returns the
    JSON's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(data, indent=indent))
    (out_dir / f"{stem}.md").write_text(markdown)
    return path
