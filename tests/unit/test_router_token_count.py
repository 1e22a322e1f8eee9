"""Cut streams counted with the model's own tokenizer (``switchboard_router.token_count``),
checked against what providers really billed on the recorded conformance streams
(``bench.estimates``), and the tokenizer's cost kept off the event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
import tiktoken_ext.openai_public as openai_public  # type: ignore[import-untyped]

from bench.estimates import Sample, error, samples
from switchboard_router import token_count
from switchboard_router.canonical import CompletionRequest, Message, Role
from switchboard_router.token_count import MAX_COUNTED_CHARS, SPECS, count_tokens, encoding_for
from switchboard_router.usage_estimate import prompt_token_count

COMPARABLE = [s for s in samples() if not s.excluded]
COUNTED = [s for s in COMPARABLE if encoding_for(s.model) is not None]


def test_the_encodings_are_tiktokens_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split pattern and digest as tiktoken defines them; the packaged ranks match it."""
    digests: dict[str, str] = {}

    def no_download(url: str, expected_hash: str) -> dict[bytes, int]:
        digests[url.rsplit("/", 1)[-1].split(".")[0]] = expected_hash
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", no_download)
    for name, spec in SPECS.items():
        assert getattr(openai_public, name)()["pat_str"] == spec.pattern
        assert digests[name] == spec.sha256
        assert len(token_count.read_ranks(name)) in (100_256, 199_998)


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("openai/gpt-5-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", "cl100k_base"),
        ("llama-3.3-70b-versatile", "cl100k_base"),
        ("llama3.1-8b", "cl100k_base"),
        ("llama-30b", None),
        ("llama-2-70b-chat", None),
        ("claude-sonnet-4-5", None),
        ("gemini-2.5-pro", None),
        ("mistral-large-latest", None),
        ("demo", None),
        ("", None),
    ],
)
def test_a_model_gets_its_familys_tokenizer_or_none(model: str, encoding: str | None) -> None:
    assert encoding_for(model) == encoding


def test_the_recorded_streams_include_some_a_tokenizer_counts() -> None:
    assert len(COUNTED) >= 8
    assert {encoding_for(s.model) for s in COUNTED} == {"o200k_base", "cl100k_base"}


@pytest.mark.parametrize(
    "sample", [s for s in COUNTED if not s.tool_calls], ids=lambda s: s.fixture
)
def test_the_tokenizer_counts_streamed_text_within_a_tenth_of_the_bill(sample: Sample) -> None:
    counted = sample.counted()
    assert counted is not None
    assert abs(counted - sample.reported) <= max(1, 0.1 * sample.reported), (counted, sample)


def test_over_the_recorded_text_the_tokenizer_errs_under_3_percent_and_beats_characters() -> None:
    text = [s for s in COUNTED if not s.tool_calls]
    billed = sum(s.reported for s in text)
    counted = sum(s.counted() or 0 for s in text)
    assert abs(error(counted, billed)) < 0.03
    mean_counted = sum(abs(error(s.counted() or 0, s.reported)) for s in text) / len(text)
    mean_chars = sum(abs(error(s.chars, s.reported)) for s in text) / len(text)
    assert mean_counted < 0.05 < mean_chars


def test_tool_calls_count_their_arguments_not_the_unstreamed_framing() -> None:
    """The known gap: gpt-4o's framing of parallel calls (~15 tokens a call) is billed but
    never streamed, so a cut stream of tool calls is billed about half: never more."""
    calls = [s for s in COUNTED if s.tool_calls]
    assert calls
    for sample in calls:
        counted = sample.counted()
        assert counted is not None and 0.4 * sample.reported < counted <= sample.reported


def test_the_recorded_gpt_4o_prompt_counts_as_openai_billed_it() -> None:
    """openai-python's test_parse_nothing, recorded live: one user message, 14 prompt tokens
    (``openai/openai_text_usage``)."""
    request = CompletionRequest(
        model="gpt-4o", messages=(Message.of(Role.USER, "What's the weather like in SF?"),)
    )
    texts = token_count.count_parts("o200k_base", [("What's the weather like in SF?",)])
    assert prompt_token_count(request, texts) == 14


def test_a_long_text_is_counted_on_its_head_and_the_rest_at_the_same_rate() -> None:
    enc = token_count.encoding("cl100k_base")
    sentence = "The quick brown fox jumps over the lazy dog. "
    text = sentence * (3 * MAX_COUNTED_CHARS // len(sentence))
    start = time.perf_counter()
    counted = token_count.count_text(enc, text)
    assert time.perf_counter() - start < 1.0
    exact = len(enc.encode_ordinary(text))
    assert abs(counted - exact) <= 0.01 * exact


async def test_a_cold_start_runs_off_the_event_loop() -> None:
    """The first count starts the worker process and reads the encoding there (~0.3 s in
    all): the router's loop keeps ticking meanwhile."""
    token_count.shutdown()
    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    start = time.perf_counter()
    counts = await count_tokens("gpt-4o", [("hello world",), ("How are you?",)], timeout=10)
    took = time.perf_counter() - start
    stop.set()
    await ticker
    assert counts == [2, 4]
    assert took > 0.1  # it did start the worker and read o200k_base
    assert max(gaps) < 0.05


async def test_no_tokenizer_or_a_slow_one_means_characters() -> None:
    assert await count_tokens("claude-sonnet-4-5", [("hello",)], timeout=10) is None
    token_count.shutdown()
    assert await count_tokens("gpt-4", [("hello",)], timeout=0.001) is None  # still starting
    assert await count_tokens("gpt-4", [("hello",)], timeout=10) == [1]


def test_the_router_starts_without_loading_a_tokenizer() -> None:
    probe = (
        "import sys, switchboard_router.app, switchboard_router.relay;"
        "assert 'tiktoken' not in sys.modules, 'tiktoken imported at start'"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
