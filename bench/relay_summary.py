"""The summary ``make bench`` prints after its rows (:mod:`bench.relay`): each router row
against the bare relay and against direct, metering's CPU, TLS against plaintext, what the
rate-limit check adds and what the HTTP edge costs over gRPC; all from the same run."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.load import Result


def _ratio(a: float | None, b: float | None) -> float:
    return (a or 0.0) / b if b else 0.0


def _cpu(row: Result) -> float:
    return row.cpu_ms_per_completion or 0.0


def versus_bare(router: Result, bare: Result, chunks: int) -> str:
    """Router/bare relay: CPU per completion (and per chunk), TTFT p50/p99, completions/s."""
    return (
        f"{router.name:<13}CPU/compl {_cpu(router):.2f} vs {_cpu(bare):.2f} ms "
        f"= {_ratio(_cpu(router), _cpu(bare)):.2f}x "
        f"({_cpu(router) * 1000 / chunks:.0f} vs {_cpu(bare) * 1000 / chunks:.0f} us/chunk), "
        f"TTFT p50 {_ratio(router.ttft_p50_ms(), bare.ttft_p50_ms()):.2f}x "
        f"p99 {_ratio(router.ttft_p99_ms(), bare.ttft_p99_ms()):.2f}x, "
        f"compl/s {_ratio(router.rate(), bare.rate()):.2f}x"
    )


def over_direct(row: Result, direct: Result) -> str:
    return (
        f"{row.name:<13}TTFT p50 {row.ttft_p50_ms() - direct.ttft_p50_ms():+.2f} ms, "
        f"p99 {row.ttft_p99_ms() - direct.ttft_p99_ms():+.2f} ms over direct "
        f"({direct.ttft_p50_ms():.2f}/{direct.ttft_p99_ms():.2f})"
    )


def edge_versus_grpc(edge: Result, grpc_row: Result) -> str:
    """What the HTTP edge costs over the gRPC path: router CPU per completion and TTFT p50."""
    return (
        f"{edge.name:<13}router CPU/completion {_cpu(edge) - _cpu(grpc_row):+.2f} ms "
        f"({_ratio(_cpu(edge), _cpu(grpc_row)):.2f}x), "
        f"TTFT p50 {edge.ttft_p50_ms() - grpc_row.ttft_p50_ms():+.2f} ms"
    )


@dataclass
class Summary:
    sections: dict[str, list[str]] = field(
        default_factory=lambda: {
            "Router versus the bare relay (router/bare, same run):": [],
            "TTFT over direct to the upstream (same run):": [],
            "Metering CPU per completion (writing the usage, router tls rows):": [],
            "TLS and mutual TLS versus plaintext (same run):": [],
            "Rate limits (tls+rate versus router tls, same run):": [],
            "HTTP edge (OpenAI SSE) versus the gRPC path, same router, same run:": [],
        }
    )

    def add(self, workload: str, chunks: int, level: int, rows: dict[str, Result]) -> None:
        bare, direct = rows["bare relay"], rows["direct"]
        secure, plain, rated = rows["router tls"], rows["router plain"], rows["tls+rate"]
        at = f"  {workload}, C={level}: "
        bare_lines, direct_lines, meter, tls, rate, edge = self.sections.values()
        bare_lines += [at + versus_bare(r, bare, chunks) for r in (secure, plain)]
        direct_lines += [at + over_direct(r, direct) for r in (bare, secure, plain)]
        meter_ms = secure.metering_cpu_ms_per_completion or 0.0
        meter.append(
            f"{at}{meter_ms:.2f} ms (router+metering {_cpu(secure) + meter_ms:.2f} ms, "
            f"{_ratio(_cpu(secure) + meter_ms, _cpu(bare)):.2f}x the bare relay)"
        )
        tls.append(
            f"{at}router CPU/completion TLS/plaintext {_ratio(_cpu(secure), _cpu(plain)):.2f}x"
            f", TTFT p50 {secure.ttft_p50_ms():.2f} vs {plain.ttft_p50_ms():.2f} ms"
        )
        rate.append(
            f"{at}router CPU/completion {_cpu(rated) - _cpu(secure):+.2f} ms, "
            f"TTFT p50 {rated.ttft_p50_ms() - secure.ttft_p50_ms():+.2f} ms"
        )
        edge += [
            at + edge_versus_grpc(rows["edge tls"], secure),
            at + edge_versus_grpc(rows["edge plain"], plain),
        ]

    def print(self) -> None:
        for title, lines in self.sections.items():
            print(f"\n{title}")
            print("\n".join(lines))
