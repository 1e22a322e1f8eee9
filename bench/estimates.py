"""``python -m bench.estimates``: how far the estimate of a cut stream is from what providers
bill, on the recorded conformance streams.

Every fixture under ``tests/conformance/recorded/{openai,anthropic,gemini}/`` that carries the
provider's usage next to the text it streamed is one sample: the streamed output (text,
refusals, tool calls of every choice, and streamed reasoning) is counted as a stream cut at
its very end would be (:mod:`switchboard_router.token_count`, else four characters a token),
and compared with the provider's ``completion_tokens``. Samples where the bill holds output
that was never streamed, or whose counts are not a provider's, are listed with the reason and
left out of the error. Then the tokenizers' cost: import, first load, memory, speed.
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard_router import token_count
from switchboard_router.usage_estimate import estimate_tokens

RECORDED = Path(__file__).resolve().parent.parent / "tests" / "conformance" / "recorded"
MODEL = re.compile(rb'"(?:model|modelVersion)"\s*:\s*"([^"]+)"')


@dataclass(frozen=True)
class Sample:
    """One recorded stream with its provider's completion count."""

    fixture: str  # format/name
    model: str
    visible: tuple[str, ...]  # text, refusals and tool calls (name, arguments) of each choice
    reasoning: tuple[str, ...]
    reported: int  # the provider's completion_tokens
    tool_calls: int
    excluded: str  # why the sample is not comparable ("" if it is)

    @property
    def family(self) -> str:
        """The model family (else the wire format), "+tools" when it called tools: their
        framing is billed but never streamed."""
        name = self.model.lower()
        found = self.fixture.split("/")[0]
        for family in ("gpt", "llama", "mistral", "magistral", "deepseek", "grok", "minimax"):
            if family in name:
                found = family
                break
        return found + ("+tools" if self.tool_calls else "")

    @property
    def chars(self) -> int:
        return estimate_tokens(sum(map(len, self.visible))) + estimate_tokens(
            sum(map(len, self.reasoning))
        )

    def counted(self) -> int | None:
        """The tokenizer's count, as ``usage_estimate.count_cut`` makes it (None: no tokenizer
        fits the model)."""
        name = token_count.encoding_for(self.model)
        if name is None:
            return None
        return sum(token_count.count_parts(name, [self.visible, self.reasoning]))


def _arguments(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _exclusion(name: str, model: str, usage: dict[str, Any], choices: list[Any]) -> str:
    """Why a stream's bill is not comparable with what it streamed ("" when it is)."""
    streamed = any(c.get(k) for c in choices for k in ("text", "refusal", "reasoning"))
    if not streamed and not any(c.get("tool_calls") for c in choices):
        return "nothing streamed"
    if usage.get("estimated"):
        return "running counts, not the final bill"
    if name.startswith("docs-"):
        return "documentation example: illustrative counts"
    if model == "claude-test" or name.startswith("two_candidates"):  # "chunk1Candidate1"...
        return "hand-written SDK fixture"
    reasoned = any(c.get("reasoning") or c.get("reasoning_blocks") for c in choices)
    if usage.get("reasoning_tokens") and not any(c.get("reasoning") for c in choices):
        return "hidden reasoning billed, not streamed"
    if model.startswith("claude") and reasoned:
        return "Claude 4 streams a summary of its thinking, bills all of it"
    return ""


def samples() -> Iterator[Sample]:
    """Every recorded stream whose expectation carries a completion count."""
    for meta_path in sorted(RECORDED.glob("*/*.json")):
        expect = json.loads(meta_path.read_text())["expect"]
        usage = expect.get("usage") or {}
        if not usage.get("completion_tokens"):
            continue
        found = MODEL.search(meta_path.with_suffix(".body").read_bytes())
        model = found.group(1).decode() if found else ""
        choices = [expect, *(expect.get("other_choices") or [])]
        calls = [call for c in choices for call in c.get("tool_calls") or []]
        visible = [c.get(k) or "" for c in choices for k in ("text", "refusal")]
        visible += [p for call in calls for p in (call["name"], _arguments(call["arguments"]))]
        reasoning = [c.get("reasoning") or "" for c in choices]
        yield Sample(
            f"{meta_path.parent.name}/{meta_path.stem}",
            model,
            tuple(t for t in visible if t),
            tuple(t for t in reasoning if t),
            usage["completion_tokens"],
            len(calls),
            _exclusion(meta_path.stem, model, usage, choices),
        )


def error(estimated: int, reported: int) -> float:
    """The relative error of an estimate, +0.25 for a quarter above the bill."""
    return estimated / reported - 1


def _pct(value: float) -> str:
    return f"{value * 100:+.0f}%"


def table(rows: list[Sample]) -> list[str]:
    """Per sample, then per family: the character estimate's and the tokenizer's error."""
    out = [f"{'fixture':46} {'model':30} {'billed':>6} {'chars':>11} {'tokenizer':>11}"]
    excluded = []
    for s in rows:
        if s.excluded:
            excluded.append(f"  {s.fixture:44} {s.excluded}")
            continue
        n = s.counted()
        tok = f"{n:>5} {_pct(error(n, s.reported)):>5}" if n is not None else f"{'-':>11}"
        note = f"  ({s.tool_calls} tool calls)" if s.tool_calls else ""
        out.append(
            f"{s.fixture:46} {s.model[:30]:30} {s.reported:>6} "
            f"{s.chars:>5} {_pct(error(s.chars, s.reported)):>5} {tok}{note}"
        )
    out += ["", "left out:", *excluded, ""]
    out.append(
        f"{'family':15} {'encoding':12} {'n':>3} {'billed':>7} {'chars':>7} {'err':>5} "
        f"{'mean|err|':>9} {'tokenizer':>9} {'err':>5} {'mean|err|':>9}"
    )
    families: dict[str, list[Sample]] = {}
    for s in rows:
        if not s.excluded:
            families.setdefault(s.family, []).append(s)
    for family, group in families.items():
        billed = sum(s.reported for s in group)
        chars = sum(s.chars for s in group)
        mean_chars = sum(abs(error(s.chars, s.reported)) for s in group) / len(group)
        counted = [s.counted() for s in group]
        name = token_count.encoding_for(group[0].model) or "-"
        tok = "        -     -         -"
        if all(c is not None for c in counted):
            total = sum(c for c in counted if c is not None)
            pairs = zip(counted, group, strict=True)
            mean = sum(abs(error(c or 0, s.reported)) for c, s in pairs) / len(group)
            tok = f"{total:>9} {_pct(error(total, billed)):>5} {mean * 100:>8.0f}%"
        out.append(
            f"{family:15} {name:12} {len(group):>3} {billed:>7} {chars:>7} "
            f"{_pct(error(chars, billed)):>5} {mean_chars * 100:>8.0f}% {tok}"
        )
    return out


def _rss_mib() -> float:
    """The resident set now (Linux), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def cost() -> list[str]:
    """What the tokenizers cost, in a process that has loaded none: the import of tiktoken
    (the first cut stream's family lookup), each encoding's first load and the memory it
    keeps, its speed per 1,000 tokens."""
    if "tiktoken" in sys.modules or token_count.loaded():
        raise RuntimeError("measure the cost before anything loads a tokenizer")
    out = []
    before, start = _rss_mib(), time.perf_counter()
    import tiktoken  # noqa: F401

    out.append(
        f"import tiktoken: {(time.perf_counter() - start) * 1e3:.0f} ms, "
        f"RSS +{_rss_mib() - before:.1f} MiB"
    )
    text = (Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md").read_text()
    for name in token_count.SPECS:
        before, start = _rss_mib(), time.perf_counter()
        enc = token_count.encoding(name)
        loaded = time.perf_counter() - start
        grown = _rss_mib() - before
        start = time.perf_counter()
        tokens = len(enc.encode_ordinary(text))
        per_k = (time.perf_counter() - start) / tokens * 1e6
        out.append(
            f"{name}: first load {loaded * 1e3:.0f} ms, RSS +{grown:.0f} MiB; "
            f"{per_k:.2f} ms per 1,000 tokens ({tokens} tokens of docs/ARCHITECTURE.md)"
        )
    return out


def main() -> None:
    measured = cost() if "--no-cost" not in sys.argv else []
    print("\n".join(table(list(samples()))))
    if measured:
        print("\n" + "\n".join(measured))


if __name__ == "__main__":
    main()
