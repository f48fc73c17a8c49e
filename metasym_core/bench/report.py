"""Shared output of every benchmark: a printed table, a section of
docs/benchmarks.md (replaced in place, other sections kept) and a JSON line."""

from __future__ import annotations

import json
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import torch

from metasym_core.io import atomic_write_text

DEFAULT_DOC = Path("docs/benchmarks.md")
_HEADER = "# MetaSym benchmarks\n\nEvery section is rewritten by the `metasym bench` command named in it.\n"


def cpu_model() -> str:
    """The CPU's model name, as `lscpu` prints it (from /proc/cpuinfo), else the platform's name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line naming the machine a figure was measured on."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads, {dev}, torch {torch.__version__}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[object]]) -> str:
    """A fixed-width table for the terminal."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*r) for r in cells[1:]]
    return "\n".join(out)


def update_section(name: str, body: str, command: str, doc: str | Path = DEFAULT_DOC) -> Path:
    """Replace (or append) the section `## name` of the benchmarks doc, atomically."""
    doc = Path(doc)
    text = doc.read_text(encoding="utf-8") if doc.exists() else _HEADER
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"## {name}\n\n_Command: `{command}` — measured {stamp} on {machine_line()}._\n\n"
               f"{body.strip()}\n\n")
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(doc, text)
    return doc


def print_json(figures: dict[str, float]) -> None:
    """Print the figures as one JSON object (keys carry their unit)."""
    print(json.dumps(figures, sort_keys=True))
