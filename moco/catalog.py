"""The configs that ship with the package (``moco/configs/``): lookup by name and the list ``mocostudy --list`` shows.

Training configs and space files are package data, so a bare name (``hardneg``, ``hardneg.yaml``, ``digits``)
resolves from any directory, also after ``pip install``. The repository's ``configs/`` is a link to the same folder,
so ``configs/fashion_mnist.yaml`` keeps working in a checkout. Anything that is not a shipped name is a path.
No torch, no Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SPACE_KEYS = ("base", "search", "variants")  # top-level keys only a space file has (a training config has none)


def resolve(name_or_path: str | Path) -> Path:
    """An existing file as given; else a shipped name (with or without ``.yaml``); else the path as given (missing)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if "/" not in name:
        for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    return path


def shipped_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  #: "space" or "config" (a training config)
    description: str  #: the file's first comment line


def entries() -> list[Entry]:
    """Every shipped file with its kind and one-line description."""
    out = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        lines = path.read_text().splitlines()
        comment = next((ln.lstrip("#").strip() for ln in lines if ln.startswith("#") and ln.lstrip("#").strip()), "")
        keys = {ln.split(":", 1)[0] for ln in lines if ln and not ln[0].isspace() and not ln.startswith("#")}
        out.append(Entry(path.stem, "space" if keys & set(SPACE_KEYS) else "config", comment))
    return out


def listing() -> str:
    """The text of ``mocostudy --list``: spaces, then training configs, each with its description."""
    rows = entries()
    width = max((len(e.name) for e in rows), default=0) + 2
    parts = []
    for kind, title in (("space", "space files (mocostudy --space NAME)"),
                        ("config", "training configs (base: {config: NAME} in a space; moco-train --config NAME)")):
        parts.append(f"{title}:")
        parts += [f"  {e.name:<{width}}{e.description}" for e in rows if e.kind == kind]
    parts.append(f"(shipped in {CONFIG_DIR}; a path to your own file works wherever a name does)")
    return "\n".join(parts)
