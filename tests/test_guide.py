"""Every code block of the guide (docs/guide/*.md) runs, chapter by chapter.

The conventions (docs/guide/README.md, "For contributors", says the same to writers):

* A chapter's blocks run in order, in a fresh temporary working directory, with
  ``numbacnn.random`` reseeded to 0 (as in a fresh interpreter).
* ```python            exec'd in the chapter's one namespace (later blocks see earlier ones).
* ```python file=NAME  written to NAME in the working directory, then exec'd like the above.
* ```python cudasim    run alone in a subprocess with NUMBA_ENABLE_CUDASIM=1 set before numba
                        is imported (Numba's CUDA simulator); self-contained, its own imports.
* ```console / ```bash  a line ``$ numbacnn ...`` is a command, run in-process as
                        ``numbacnn.cli.main(shlex.split(...)[1:])``, and must return 0; every
                        other line is that command's output.
* ```text              the output of the block just before it.
* Shown output is checked: each shown line (whitespace runs collapsed) must appear in what
  the command or block printed, in the order shown; a line ``...`` marks lines left out, and
  ``...`` inside a line stands for any text.

Any other fence (no language, another language, ``~~~``, an indented fence) fails the
chapter's test: no block is exempt. A failure names the chapter (the test id), the block's
line and its kind; a Python traceback points at the Markdown file's own line numbers.
Each chapter's relative links must resolve (test_guide_links).
"""

import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide"
CHAPTERS = sorted(GUIDE.glob("*.md"))
LANGUAGES = ("python", "console", "bash", "text")


class Block(NamedTuple):
    line: int  # 1-based line of the opening fence
    language: str
    options: dict  # file=NAME -> {"file": NAME}; a bare word -> {word: True}
    code: str


def parse_blocks(path):
    """The fenced blocks of a Markdown file, in order. Raises ValueError on a fence the
    runner would not execute (so none is silently skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"\s+(```|~~~)", line) or line.startswith("~~~"):
            raise ValueError(f"{path.name}:{i + 1}: only unindented ``` fences run: {line.strip()!r}")
        if not line.startswith("```"):
            i += 1
            continue
        words = line[3:].split()
        if not words or words[0] not in LANGUAGES:
            raise ValueError(f"{path.name}:{i + 1}: a block's language must be one of {LANGUAGES}: {line!r}")
        options = {}
        for word in words[1:]:
            key, eq, value = word.partition("=")
            options[key] = value if eq else True
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{path.name}:{start + 1}: block never closed")
        blocks.append(Block(start + 1, words[0], options, "\n".join(body) + "\n"))
        i += 1
    return blocks


def _normalise(line):
    return " ".join(line.split())


def _matcher(expected):
    """A shown line -> a test of a printed line: equal, or with ``...`` standing for any text."""
    if "..." not in expected:
        return lambda line: line == expected
    pattern = re.compile(".*".join(re.escape(part) for part in expected.split("...")))
    return lambda line: pattern.fullmatch(line) is not None


def check_output(shown, printed, where):
    """Each shown line must be a printed line, in the order shown (``...`` lines skipped;
    ``...`` inside a line stands for any text)."""
    printed_lines = [_normalise(s) for s in printed.splitlines()]
    k = 0
    for expected in shown:
        expected = _normalise(expected)
        if not expected or expected == "...":
            continue
        matches = _matcher(expected)
        while k < len(printed_lines) and not matches(printed_lines[k]):
            k += 1
        if k == len(printed_lines):
            pytest.fail(
                f"{where}: shown output line not printed (in this order):\n  {expected}\nprinted:\n{printed}"
            )
        k += 1


class Chapter:
    """Runs one chapter's blocks in order."""

    def __init__(self, path, workdir):
        self.path = path
        self.rel = path.relative_to(ROOT).as_posix()
        self.workdir = workdir
        self.namespace = {"__name__": "__main__"}  # as in the reader's session
        self.last_output = None  # what the previous block printed (for a ```text block)

    def where(self, block):
        kind = " ".join(
            [block.language, *(f"{k}={v}" if v is not True else k for k, v in block.options.items())]
        )
        return f"{self.rel}, block at line {block.line} ({kind})"

    def run(self, block):
        where = self.where(block)
        if block.language == "text":
            if self.last_output is None:
                pytest.fail(
                    f"{where}: a ```text block shows the output of the block before it; there is none"
                )
            check_output(block.code.splitlines(), self.last_output, where)
            self.last_output = None
        elif block.language == "python":
            unknown = set(block.options) - {"file", "cudasim"}
            if unknown or block.options.get("file") is True:
                pytest.fail(f"{where}: python blocks take file=NAME or cudasim, got {sorted(unknown)}")
            if "file" in block.options:
                (self.workdir / block.options["file"]).write_text(block.code, encoding="utf-8")
            if "cudasim" in block.options:
                self.last_output = self.run_cudasim(block, where)
            else:
                self.last_output = self.run_python(block, where)
        else:  # console, bash
            if block.options:
                pytest.fail(f"{where}: console blocks take no options")
            self.last_output = self.run_console(block, where)

    def _source(self, block):
        # padded so that tracebacks give the Markdown file's line numbers
        return "\n" * block.line + block.code

    def run_python(self, block, where):
        out = io.StringIO()
        try:
            code = compile(self._source(block), str(self.path), "exec")
            with contextlib.redirect_stdout(out):
                exec(code, self.namespace)
        except KeyboardInterrupt:
            raise
        except BaseException:  # SystemExit too: a block must not end the reader's session
            pytest.fail(f"{where} raised:\n{traceback.format_exc()}\nprinted:\n{out.getvalue()}")
        return out.getvalue()

    def run_cudasim(self, block, where):
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        runner = "import sys; exec(compile(sys.stdin.read(), sys.argv[1], 'exec'), {'__name__': '__main__'})"
        proc = subprocess.run(
            [sys.executable, "-c", runner, str(self.path)],
            input=self._source(block),
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=env,
            timeout=300,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"{where} exited {proc.returncode} under the CUDA simulator:\n{proc.stderr}\n"
                f"printed:\n{proc.stdout}"
            )
        return proc.stdout

    def run_console(self, block, where):
        from numbacnn.cli import main

        commands = []  # [(line, argv, shown output lines)]
        for k, line in enumerate(block.code.splitlines()):
            if line.startswith("$ "):
                argv = shlex.split(line[2:], comments=True)
                if not argv or argv[0] != "numbacnn":
                    pytest.fail(
                        f"{where}: line {block.line + 1 + k}: only `$ numbacnn ...` commands run: {line!r}"
                    )
                commands.append((block.line + 1 + k, argv, []))
            elif commands:
                commands[-1][2].append(line)
            elif line.strip():
                pytest.fail(f"{where}: line {block.line + 1 + k}: output before any `$ numbacnn` command")
        if not commands:
            pytest.fail(f"{where}: a console block holds at least one `$ numbacnn ...` command")
        out = ""
        for line, argv, shown in commands:
            buffer, errors = io.StringIO(), io.StringIO()
            sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
            try:
                with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(errors):
                    code = main(argv[1:])
            except KeyboardInterrupt:
                raise
            except BaseException:
                pytest.fail(
                    f"{where}: line {line}: `{shlex.join(argv)}` raised:\n{traceback.format_exc()}\n"
                    f"printed:\n{buffer.getvalue()}{errors.getvalue()}"
                )
            finally:
                signal.signal(signal.SIGTERM, sigterm)
            if code != 0:
                pytest.fail(
                    f"{where}: line {line}: `{shlex.join(argv)}` returned {code}:\n"
                    f"{buffer.getvalue()}{errors.getvalue()}"
                )
            check_output(shown, buffer.getvalue(), f"{where}: line {line}")
            out = buffer.getvalue()
        return out  # the last command's output, for a ```text block after this one


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_guide_chapter_runs(path, tmp_path, monkeypatch):
    import numbacnn.random

    blocks = parse_blocks(path)
    monkeypatch.chdir(tmp_path)
    numbacnn.random.seed(0)
    chapter = Chapter(path, tmp_path)
    for block in blocks:
        chapter.run(block)


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_guide_links(path):
    """Every relative link resolves to a file or folder of the repository."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    text = re.sub(r"`[^`]+`", "", text)  # code spans (an index like a[i](...) is no link)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.exists(), f"{path.relative_to(ROOT)}: link {target!r} does not resolve"
        assert ROOT in resolved.parents or resolved == ROOT, (
            f"{path.name}: link {target!r} leaves the repository"
        )


def test_guide_index_lists_every_chapter():
    index = (GUIDE / "README.md").read_text(encoding="utf-8")
    chapters = [p.name for p in CHAPTERS if p.name != "README.md"]
    assert len(chapters) == 11
    for name in chapters:
        assert f"]({name})" in index, f"docs/guide/README.md does not link {name}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/guide/README.md)" in readme or "](docs/guide/)" in readme
