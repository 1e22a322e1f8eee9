"""The protos are a product: every declaration is documented, every file carries the language
options generators need, and ``buf breaking`` catches what would break a client.

The comment check reads the .proto files themselves (the generated Python descriptors carry no
comments), with buf's rule for what counts as a declaration's comment: the ``//`` lines right
above it, no blank line between. It also refuses filler: a comment whose words are only the
declaration's own name ("The key id." on ``key_id``). ``buf lint`` (STANDARD plus the COMMENT_*
rules of protos/buf.yaml) runs too, with buf from ``.tools`` (installed from npm, as
``make lint`` does, when missing), and so does the breaking check's configuration against a
scratch copy of the protos with a field renumbered and one renamed.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
PROTO_FILES = sorted(PROTOS.rglob("*.proto"))
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
BUF_TIMEOUT_SECONDS = 60
NPM_TIMEOUT_SECONDS = 300

_DECLARATION = re.compile(
    r"^\s*(?:(?P<block>message|enum|service|oneof)\s+(?P<block_name>\w+)\s*\{"
    r"|rpc\s+(?P<rpc>\w+)\s*\("
    r"|(?:optional\s+|repeated\s+)?[\w.]+\s+(?P<field>\w+)\s*=\s*\d+\s*;"
    r"|(?P<value>[A-Z][A-Z0-9_]*)\s*=\s*-?\d+\s*;)"
)
# Words that say nothing about a declaration on their own.
_EMPTY_WORDS = frozenset({"the", "a", "an", "of", "its", "this", "is", "for", "s"})


def _words(text: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    return {w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w} - _EMPTY_WORDS


def undocumented(text: str) -> Iterator[tuple[int, str, str]]:
    """``(line, name, why)`` for each declaration of a .proto text without a useful comment."""
    comment: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("//"):
            comment.append(stripped.removeprefix("//"))
            continue
        match = _DECLARATION.match(line)
        if match:
            name = next(n for n in match.group("block_name", "rpc", "field", "value") if n)
            said = _words(" ".join(comment))
            if not said:
                yield number, name, "no comment"
            elif said <= _words(name):
                yield number, name, f"the comment only repeats the name: {' '.join(comment)!r}"
        comment = []


def test_the_filler_check_can_fail() -> None:
    text = """
// A key.
message ApiKey {
  // The key id.
  string key_id = 1;
  string name = 2;

  // Detached by the blank line.

  bool revoked = 3;
  // Never sent.
  KIND_UNSPECIFIED = 0;
}
"""
    assert [(name, why.split(":")[0]) for _, name, why in undocumented(text)] == [
        ("ApiKey", "the comment only repeats the name"),
        ("key_id", "the comment only repeats the name"),
        ("name", "no comment"),
        ("revoked", "no comment"),
    ]


@pytest.mark.parametrize("path", PROTO_FILES, ids=lambda p: str(p.relative_to(PROTOS)))
def test_every_declaration_has_a_useful_comment(path: Path) -> None:
    found = [f"{line}: {name}: {why}" for line, name, why in undocumented(path.read_text())]
    assert not found, f"{path.relative_to(ROOT)}:\n" + "\n".join(found)


@pytest.mark.parametrize("path", PROTO_FILES, ids=lambda p: str(p.relative_to(PROTOS)))
def test_language_options_reach_the_generated_code(path: Path) -> None:
    """go_package and the java options, read from the generated Python module's descriptor
    (the options change nothing else in it: the module path stays the proto path)."""
    relative = path.relative_to(PROTOS)
    service = relative.parts[1]
    module = importlib.import_module(".".join(relative.with_suffix("").parts) + "_pb2")
    options = module.DESCRIPTOR.GetOptions()
    assert options.go_package == (
        f"github.com/switchboard-llm/switchboard/clients/go/gen/switchboard/{service}/v1;{service}v1"
    )
    assert options.java_package == f"dev.switchboard.{service}.v1"
    assert options.java_multiple_files
    assert options.java_outer_classname == relative.stem.capitalize() + "Proto"


def _buf_version() -> str:
    found = re.search(r"^BUF_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert found, "BUF_VERSION is not set in the Makefile"
    return found.group(1)


@pytest.fixture(scope="module")
def buf() -> Path:
    """buf from .tools, installed from npm as the Makefile's $(BUF) rule does when missing."""
    if not BUF.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed, so buf cannot be (make lint runs buf lint)")
        done = subprocess.run(
            [npm, "install", "--silent", "--prefix", str(ROOT / ".tools"),
             f"@bufbuild/buf@{_buf_version()}"],
            capture_output=True, text=True, timeout=NPM_TIMEOUT_SECONDS, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not BUF.exists():
            pytest.skip(f"could not install buf from npm: {done.stderr.strip()[-500:]}")
    return BUF


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=BUF_TIMEOUT_SECONDS, check=False
    )


def test_buf_lint_passes_with_the_comment_rules(buf: Path, tmp_path: Path) -> None:
    """buf lint passes on the protos, and fails on a copy with one field's comment removed."""
    config = (PROTOS / "buf.yaml").read_text()
    for rule in ("COMMENT_ENUM", "COMMENT_ENUM_VALUE", "COMMENT_FIELD", "COMMENT_MESSAGE",
                 "COMMENT_ONEOF", "COMMENT_RPC", "COMMENT_SERVICE"):  # fmt: skip
        assert f"- {rule}\n" in config
    done = _run([str(buf), "lint"], PROTOS)
    assert done.returncode == 0, done.stdout + done.stderr
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy)
    _edit(
        copy / "switchboard/metering/v1/metering.proto",
        "  // From request start to the last token; 0 to 86,400,000 (a day).\n",
        "",
    )
    undocumented_field = _run([str(buf), "lint"], copy)
    assert undocumented_field.returncode != 0
    assert 'Field "latency_ms" should have a non-empty comment' in undocumented_field.stdout


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def test_breaking_config_catches_wire_and_json_breaks(buf: Path, tmp_path: Path) -> None:
    """The repository's buf.yaml (WIRE_JSON), against the repository's protos: a copy with a
    field added passes; one with a field renumbered or renamed fails, naming it."""
    metering = Path("switchboard/metering/v1/metering.proto")

    def breaking(old: str, new: str) -> subprocess.CompletedProcess[str]:
        copy = tmp_path / f"protos-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(PROTOS, copy)
        _edit(copy / metering, old, new)
        return _run([str(buf), "breaking", str(copy), "--against", str(PROTOS)], tmp_path)

    field = "  string trace_parent = 20;\n"
    added = breaking(field, field + "  bool x = 99;\n")
    assert added.returncode == 0, added.stdout + added.stderr
    renumbered = breaking("  int64 latency_ms = 14;", "  int64 latency_ms = 114;")
    assert renumbered.returncode != 0
    assert 'field "14" with name "latency_ms"' in renumbered.stdout
    renamed = breaking("  int64 latency_ms = 14;", "  int64 latency_millis = 14;")
    assert renamed.returncode != 0
    assert 'changed name from "latency_ms" to "latency_millis"' in renamed.stdout


def test_the_breaking_baseline_is_a_commit_of_this_repository() -> None:
    baseline = (PROTOS / "BREAKING_BASELINE").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{40}", baseline), "a full commit id, as `git rev-parse HEAD`"
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    shallow = _run([git, "rev-parse", "--is-shallow-repository"], ROOT).stdout.strip()
    if shallow == "true":
        pytest.skip("a shallow clone: `make breaking` fetches the baseline first")
    found = _run([git, "cat-file", "-e", f"{baseline}^{{commit}}"], ROOT)
    assert found.returncode == 0, f"{baseline} is not a commit of this repository"
