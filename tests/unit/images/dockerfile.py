"""A small Dockerfile reader for the image tests: instructions, stages, ARG defaults, exec-form arguments."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str]:
        """ENTRYPOINT/CMD/COPY arguments: the JSON array, else the words of the shell form."""
        if self.value.startswith("["):
            return json.loads(self.value)
        return shlex.split(self.value)


@dataclass
class Stage:
    base: str
    """The FROM image with ARG defaults substituted."""
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def args(self) -> dict[str, str]:
        """ARG defaults declared in this stage."""
        out = {}
        for i in self.all("ARG"):
            name, _, default = i.value.partition("=")
            out[name.strip()] = default.strip().strip('"')
        return out

    def labels(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in self.all("LABEL"):
            for word in shlex.split(i.value):
                key, _, value = word.partition("=")
                out[key] = value
        return out


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage_names(self) -> set[str]:
        return {s.name for s in self.stages if s.name}


def instructions(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and parser directives dropped."""
    out: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer.append(line[:-1].strip())
            continue
        buffer.append(line)
        joined = " ".join(b for b in buffer if b)
        buffer = []
        keyword, _, value = joined.partition(" ")
        out.append(Instruction(keyword.upper(), value.strip(), start))
    if buffer:
        raise ValueError("the last instruction ends with a line continuation")
    return out


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions(path.read_text()):
        if ins.keyword == "FROM":
            words = ins.value.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(substitute(words[0], global_args), name))
        elif not stages:
            if ins.keyword != "ARG":
                raise ValueError(f"{path}:{ins.line}: {ins.keyword} before the first FROM")
            name, _, default = ins.value.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(path, global_args, stages)
