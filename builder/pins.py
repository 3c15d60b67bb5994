"""Write requirements.txt and builder/requirements.txt from pyproject.toml's extras.

pyproject.toml is the one place a version is pinned; the two files are what pip installs
where an extra can't be used: the CPU suite (setup_local.sh) and the GPU image (the
Dockerfile installs its requirements before copying the code, so the layer is cached).
Which extras each file holds, and the CPU builds the suite uses in place of the image's
CUDA ones, are in ``[tool.medgemma-runpod.requirements]``.

    python -m builder.pins           # rewrite both files
    python -m builder.pins --check   # exit 1 naming the files that are stale
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
SUITE_FILE = REPO / "requirements.txt"
IMAGE_FILE = REPO / "builder" / "requirements.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
SELF_REFERENCE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\[([^\]]+)\]$")
HEADER = "# Generated from pyproject.toml by `python -m builder.pins`: edit pyproject.toml (why each pin is\n"
HEADER += "# there is said beside it) and re-run; tests/test_builder.py fails when this file is stale.\n"
ABOUT = {
    "suite": (
        "# The CPU test suite's set, installed by builder/setup_local.sh (which then removes PyPI's\n"
        "# CUDA-only torchaudio and torchcodec, and lets its torchvision import: see there why).\n"
        "# {cpu} in place of the image's {cuda}.\n"
    ),
    "image": (
        "# The GPU image's set (../Dockerfile): the CUDA builds of the versions ../requirements.txt pins\n"
        "# for the suite, without the stand-in model's packages and the test, lint and benchmark tools.\n"
    ),
}


@dataclass(frozen=True)
class Project:
    name: str
    extras: dict[str, list[str]]
    files: dict[str, list[str]]
    cpu_builds: dict[str, str]

    @classmethod
    def load(cls, path: Path = PYPROJECT) -> Project:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        settings = data["tool"]["medgemma-runpod"]["requirements"]
        return cls(
            name=data["project"]["name"],
            extras=data["project"]["optional-dependencies"],
            files={"suite": settings["suite"], "image": settings["image"]},
            cpu_builds=settings.get("cpu-builds", {}),
        )

    def closure(self, extras: list[str]) -> list[str]:
        """The extras named, and those they name through ``<this project>[...]``, in pyproject's order."""
        wanted: set[str] = set()
        pending = list(extras)
        while pending:
            extra = pending.pop()
            if extra in wanted:
                continue
            if extra not in self.extras:
                raise ValueError(f"pyproject.toml: no extra named {extra!r}")
            wanted.add(extra)
            for requirement in self.extras[extra]:
                reference = SELF_REFERENCE.match(requirement.replace(" ", ""))
                if reference and reference.group(1) == self.name:
                    pending.extend(reference.group(2).split(","))
        return [extra for extra in self.extras if extra in wanted]

    def pins(self, extra: str) -> list[tuple[str, str]]:
        """(name, version) of an extra's own requirements; each must be an exact ``==`` pin."""
        found = []
        for requirement in self.extras[extra]:
            requirement = requirement.replace(" ", "")
            reference = SELF_REFERENCE.match(requirement)
            if reference and reference.group(1) == self.name:
                continue
            pin = PIN.match(requirement)
            if pin is None:
                raise ValueError(f"pyproject.toml: [{extra}] {requirement!r} is not pinned with ==")
            found.append((pin.group(1), pin.group(2)))
        return found

    def render(self, file: str) -> str:
        """The text of one requirements file (``suite`` or ``image``)."""
        extras = self.closure(self.files[file])
        cpu, cuda = ", ".join(self.cpu_builds.values()), ", ".join(self.cpu_builds)
        lines = [HEADER + ABOUT[file].format(cpu=cpu, cuda=cuda)]
        lines[0] += f"# Extras: {', '.join(extras)}.\n"
        for extra in extras:
            lines.append(f"\n# [{extra}]\n")
            for name, version in self.pins(extra):
                if file == "suite":
                    name = self.cpu_builds.get(name, name)
                lines.append(f"{name}=={version}\n")
        return "".join(lines)


def targets() -> dict[Path, str]:
    project = Project.load()
    return {SUITE_FILE: project.render("suite"), IMAGE_FILE: project.render("image")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = [path for path, text in targets().items() if not path.is_file() or path.read_text() != text]
    if args.check:
        if stale:
            names = ", ".join(str(path.relative_to(REPO)) for path in stale)
            sys.exit(f"pins: {names} differ from pyproject.toml; run python -m builder.pins")
        return
    for path, text in targets().items():
        if path in stale:
            path.write_text(text)
            print(f"pins: wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
