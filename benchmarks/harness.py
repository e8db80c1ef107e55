"""``gatattn bench``: gatattn against its peers, side by side in one process (docs/benchmarks.md).

Every method is a full attention layer with the same Q/K/V/O projections (C → C, H heads):

    gatattn (auto)       GraphAttention(backend="auto"); the chosen backend is shown
    gatattn edge/block   GraphAttention with that backend forced
    SDPA                 F.scaled_dot_product_attention on the full N×N (no mask)
    masked SDPA          the same with the graph's boolean mask [N, N]
    nn.MHA               nn.MultiheadAttention with the same weights (need_weights=False)
    PyG eager / compile  torch_geometric.nn.TransformerConv (+ an output Linear), eager and torch.compile
    FlexAttention        flex_attention with the graph's BlockMask (CUDA)

Cases: P1 complete graph, P2 ±w window, P3 random in-degree d, P4 peak memory against E for the
edge and block backends. Reported: median time of forward (no grad) and forward+backward, and the
peak memory of forward+backward above the live tensors (CUDA: max_memory_allocated; CPU: the
process's peak resident set, reset through /proc/self/clear_refs before each measurement).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cli import UsageError

__all__ = ["configure", "run", "run_cases"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Row:
    """One method on one case: times in ms, peak memory in MiB (None = not run, with a note)."""

    case: str
    method: str
    dtype: str
    fwd_ms: float | None = None
    fwdbwd_ms: float | None = None
    peak_mib: float | None = None
    note: str = ""


@dataclass
class Config:
    """Sizes and options of one benchmark run."""

    device: str = "cpu"
    dtypes: tuple[str, ...] = ("fp32",)
    cases: tuple[str, ...] = ("P1", "P2", "P3", "P4")
    channels: int = 512
    heads: int = 8
    n1: int = 1024
    n2: int = 8192
    window: int = 128
    n3: int = 16384
    degree: int = 64
    repeat: int = 3
    compile: bool = True
    max_pyg_edges: int = 1_100_000
    max_sdpa_nodes: int = 8192
    p4_nodes: int = 4096
    p4_sizes: tuple[int, ...] = (32, 64, 128, 256)  # in-degrees (edge); windows are half
    p4_subprocess: bool = True  # CPU: one fresh process per P4 point
    rows: list[Row] = field(default_factory=list)


# ---------------------------------------------------------------------------- measurement
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rss_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _trim() -> None:
    try:  # hand freed heap pages back to the OS, so the next peak is measured from a clean base
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mib(fn: Callable[[], Any], device: str) -> float | None:
    """Peak memory of ``fn()`` above what was live before, in MiB (None if unmeasurable)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        _trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak RSS) to the current RSS
        base = _rss_kib("VmRSS:")
        fn()
        return (_rss_kib("VmHWM:") - base) / 1024
    except OSError:
        return None


# ---------------------------------------------------------------------------- methods
class Projected(nn.Module):
    """Q/K/V/O projections around an attention kernel ``attn(q, k, v) -> [N, H, D]``."""

    def __init__(self, c: int, h: int, attn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.h, self.attn = h, attn
        self.q, self.k, self.v, self.o = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape
        q, k, v = (p(x).view(n, self.h, c // self.h) for p in (self.q, self.k, self.v))
        return self.o(self.attn(q, k, v).reshape(n, c))  # [N, C]


def _heads_first(t: Tensor) -> Tensor:
    return t.transpose(0, 1).unsqueeze(0)  # [N, H, D] -> [1, H, N, D]


def _sdpa(mask: Tensor | None) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def attn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = F.scaled_dot_product_attention(
            _heads_first(q), _heads_first(k), _heads_first(v), attn_mask=mask
        )
        return out[0].transpose(0, 1)  # [N, H, D]

    return attn


def _flex(graph: Any, device: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    from .backends.flex import block_mask_for

    bm = block_mask_for(graph, torch.device(device))
    kernel = torch.compile(flex_attention, dynamic=False)

    def attn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = kernel(_heads_first(q), _heads_first(k), _heads_first(v), block_mask=bm)
        return out[0].transpose(0, 1)  # [N, H, D]

    return attn


class PyGLayer(nn.Module):
    """PyG TransformerConv (Shi et al. 2021) plus an output Linear: the same four projections."""

    def __init__(self, c: int, h: int) -> None:
        super().__init__()
        from torch_geometric.nn import TransformerConv

        self.conv = TransformerConv(c, c // h, heads=h, root_weight=False)
        self.o = nn.Linear(c, c)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.o(self.conv(x, edge_index))  # [N, C]


def _methods(cfg: Config, case: str, graph: Any, dtype: torch.dtype) -> list[tuple[str, Any]]:
    """(name, callable(x) -> out [N, C]) for every method that applies to this case."""
    import gatattn as ga

    c, h, dev = cfg.channels, cfg.heads, cfg.device
    out: list[tuple[str, Any]] = []

    def to(m: nn.Module) -> nn.Module:
        return m.to(dev, dtype)

    auto = ga.GraphAttention(c, h).to(dev, dtype)
    q = torch.empty(0, h, c // h, device=dev, dtype=dtype)
    chosen = ga.backends.select_backend("auto", auto.score, graph, q)[0]
    out.append((f"gatattn auto ({chosen})", lambda x: auto(x, graph)))
    for name in ("edge", "block"):
        if name == chosen or (name == "block" and case != "P2"):
            continue
        if name == "edge" and graph.num_edges > cfg.max_pyg_edges:  # as slow as PyG eager on CPU
            continue
        layer = to(ga.GraphAttention(c, h, backend=name))
        out.append((f"gatattn {name}", lambda x, m=layer: m(x, graph)))
    n = graph.num_dst
    if n <= cfg.max_sdpa_nodes:
        out.append(("SDPA (full)", to(Projected(c, h, _sdpa(None)))))
        if graph.structure != "complete":
            mask = graph.to_dense_mask()  # [N, N] bool, SDPA convention
            out.append(("masked SDPA", to(Projected(c, h, _sdpa(mask)))))
    if graph.structure == "complete":
        mha = to(nn.MultiheadAttention(c, h))
        out.append(("nn.MultiheadAttention", lambda x: mha(x, x, x, need_weights=False)[0]))
    if graph.num_edges <= cfg.max_pyg_edges:
        pyg = to(PyGLayer(c, h))
        ei = graph.edge_index
        out.append(("PyG TransformerConv", lambda x: pyg(x, ei)))
        if cfg.compile:
            pyg_c = torch.compile(to(PyGLayer(c, h)), dynamic=False)
            out.append(("PyG TransformerConv (compile)", lambda x: pyg_c(x, ei)))
    if dev == "cuda":
        out.append(("FlexAttention", to(Projected(c, h, _flex(graph, dev)))))
    return out


def _measure(cfg: Config, case: str, graph: Any, dtype_name: str) -> None:
    """Time and measure every method; the timed rounds interleave the methods, so that a change
    in background load hits them all alike."""
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(graph.num_dst, cfg.channels, generator=gen).to(cfg.device, dtype)
    x = x0.clone().requires_grad_()
    runs: list[tuple[Row, Callable[[], None], Callable[[], None]]] = []
    first: dict[int, list[float]] = {}
    k0 = len(cfg.rows)
    for name, fn in _methods(cfg, case, graph, dtype):
        row = Row(case, name, dtype_name)

        def fwd(fn: Any = fn) -> None:
            with torch.no_grad():
                fn(x0)

        def fwdbwd(fn: Any = fn) -> None:
            fn(x).float().square().mean().backward()
            x.grad = None

        try:
            compiled = "compile" in name or "Flex" in name
            if compiled:
                fwd()  # compiles the no-grad graph: not part of the time
            t_fwd = _timed(fwd, cfg.device)  # warm-up
            if compiled:
                fwdbwd()  # compiles the backward; not part of the memory or the time
            t0 = time.perf_counter()
            row.peak_mib = peak_memory_mib(fwdbwd, cfg.device)  # also the warm-up run
            _sync(cfg.device)
            first[id(row)] = [t_fwd, time.perf_counter() - t0]
            runs.append((row, fwd, fwdbwd))
        except (RuntimeError, torch.OutOfMemoryError) as err:  # a peer that cannot run here
            row.note = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
        cfg.rows.append(row)
    samples: dict[int, list[list[float]]] = {id(r): [[], []] for r, _, _ in runs}
    for _ in range(cfg.repeat):
        for row, run_fwd, run_fwdbwd in runs:
            for k, f in enumerate((run_fwd, run_fwdbwd)):
                if first[id(row)][k] <= 5.0:  # slower methods: the warm-up is the measurement
                    samples[id(row)][k].append(_timed(f, cfg.device))
    for row, _, _ in runs:
        fwd_s, fb_s = (s or [first[id(row)][k]] for k, s in enumerate(samples[id(row)]))
        row.fwd_ms, row.fwdbwd_ms = 1e3 * statistics.median(fwd_s), 1e3 * statistics.median(fb_s)
    for row in cfg.rows[k0:]:
        print(_format_row(row), flush=True)


def _timed(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- cases
def _graphs(cfg: Config, case: str) -> list[tuple[str, Any]]:
    import gatattn as ga

    dev = cfg.device
    if case == "P1":
        return [(f"P1 complete N={cfg.n1}", ga.complete_graph(cfg.n1, device=dev))]
    if case == "P2":
        g = ga.window_graph(cfg.n2, cfg.window, device=dev)
        return [(f"P2 window ±{cfg.window} N={cfg.n2}", g)]
    if case == "P3":
        gen = torch.Generator().manual_seed(0)
        src = torch.randint(0, cfg.n3, (cfg.n3 * cfg.degree,), generator=gen)  # [E]
        dst = torch.arange(cfg.n3).repeat_interleave(cfg.degree)  # [E] in-degree d each
        g = ga.TokenGraph(torch.stack([src, dst]).to(dev), cfg.n3, cfg.n3)
        return [(f"P3 random in-degree {cfg.degree} N={cfg.n3}", g)]
    raise UsageError(f"unknown case {case!r}; choose from P1, P2, P3, P4")


def _p4_graph(backend: str, n: int, size: int, device: str) -> Any:
    """P4's graph: random in-degree ``size`` (edge backend) or a ±size/2 window (block)."""
    import gatattn as ga

    if backend == "block":
        return ga.window_graph(n, size // 2, device=device)
    gen = torch.Generator().manual_seed(size)
    src = torch.randint(0, n, (n * size,), generator=gen)  # [E]
    dst = torch.arange(n).repeat_interleave(size)  # [E]
    return ga.TokenGraph(torch.stack([src, dst]).to(device), n, n)


def p4_point(
    backend: str, n: int, size: int, c: int, h: int, device: str
) -> tuple[int, float | None]:
    """(E, peak MiB) of one forward+backward of a fresh layer (run in a fresh process on CPU)."""
    import gatattn as ga

    g = _p4_graph(backend, n, size, device)
    x = torch.randn(n, c, device=device).requires_grad_()
    layer = ga.GraphAttention(c, h, backend=backend).to(device)

    def step() -> None:
        layer(x, g).square().mean().backward()
        x.grad = None

    if device == "cuda":
        step()  # warm-up: CUDA context and kernels are not part of the peak
    return g.num_edges, peak_memory_mib(step, device)


def _p4(cfg: Config) -> None:
    """Peak forward+backward memory of the edge and block backends as E grows (fp32).

    On CPU every point runs in a fresh Python process, so that no allocator state of an earlier
    point hides or inflates its peak resident set.
    """
    import subprocess
    import sys

    n, c, h = cfg.p4_nodes, cfg.channels, cfg.heads
    for backend in ("edge", "block"):
        pts = []
        for size in cfg.p4_sizes:
            args = (backend, n, size, c, h, cfg.device)
            if cfg.device == "cpu" and cfg.p4_subprocess:
                code = (
                    "import sys, torch; from gatattn.bench import p4_point; "
                    f"torch.set_num_threads({torch.get_num_threads()}); print(p4_point{args!r})"
                )
                res = subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, check=True
                )
                e, mib = eval(
                    res.stdout.strip().splitlines()[-1]
                )  # a (int, float) tuple we printed
            else:
                e, mib = p4_point(*args)
            ehd = e * c * 4 / 2**20  # one fp32 [E, H, D] tensor
            note = f"E={e}; one [E,H,D] fp32 tensor = {ehd:.0f} MiB"
            row = Row("P4 memory vs E", f"gatattn {backend}", "fp32", peak_mib=mib, note=note)
            cfg.rows.append(row)
            print(_format_row(row), flush=True)
            if mib is not None:
                pts.append((e, mib))
        if len(pts) >= 3:
            cfg.rows.append(Row("P4 memory vs E", f"gatattn {backend} fit", "fp32", note=_fit(pts)))
            print(f"  {backend}: {cfg.rows[-1].note}", flush=True)


def _fit(pts: list[tuple[int, float]]) -> str:
    """Least-squares line through (E, MiB): slope in bytes/edge and R²."""
    xs, ys = [float(e) for e, _ in pts], [m for _, m in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sxx
    ss_res = sum((b - (my + slope * (a - mx))) ** 2 for a, b in zip(xs, ys))
    ss_tot = sum((b - my) ** 2 for b in ys) or 1.0
    return f"linear fit: {slope * 2**20:.0f} bytes/edge, R²={1 - ss_res / ss_tot:.3f}"


def run_cases(cfg: Config, on_case: Callable[[list[Row]], None] | None = None) -> list[Row]:
    """Run the configured cases; rows are printed as they come and returned. ``on_case(rows)``
    runs after each case (the CLI rewrites its output files, so a run cut short keeps them)."""
    for case in cfg.cases:
        if case == "P4":
            _p4(cfg)
        else:
            for title, graph in _graphs(cfg, case):
                for dt in cfg.dtypes:
                    print(f"\n## {title}, C={cfg.channels}, H={cfg.heads}, {dt}", flush=True)
                    _measure(cfg, title, graph, dt)
        if on_case is not None:
            on_case(cfg.rows)
    return cfg.rows


# ---------------------------------------------------------------------------- report
def _fmt(v: float | None, nd: int = 1) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _format_row(r: Row) -> str:
    return (
        f"  {r.method:34s} fwd {_fmt(r.fwd_ms):>9} ms  fwd+bwd {_fmt(r.fwdbwd_ms):>9} ms  "
        f"peak {_fmt(r.peak_mib, 0):>7} MiB  {r.note}"
    )


def markdown(rows: list[Row]) -> str:
    """The results as a Markdown table with time and memory ratios to gatattn (auto)."""
    lines = [
        "| case | dtype | method | fwd ms | fwd+bwd ms | peak MiB | fwd+bwd ÷ gatattn | peak ÷ gatattn | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ref = next(
            (
                a
                for a in rows
                if a.case == r.case and a.dtype == r.dtype and a.method.startswith("gatattn auto")
            ),
            None,
        )
        tr = mr = None
        if ref is not None and r.fwdbwd_ms and ref.fwdbwd_ms:
            tr = r.fwdbwd_ms / ref.fwdbwd_ms
        if ref is not None and r.peak_mib and ref.peak_mib:
            mr = r.peak_mib / ref.peak_mib
        lines.append(
            f"| {r.case} | {r.dtype} | {r.method} | {_fmt(r.fwd_ms)} | {_fmt(r.fwdbwd_ms)} | "
            f"{_fmt(r.peak_mib, 0)} | {_fmt(tr, 2)} | {_fmt(mr, 2)} | {r.note} |"
        )
    return "\n".join(lines)


def machine() -> str:
    """One line naming the device, torch and PyG versions."""
    import platform

    import torch_geometric

    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        dev = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return f"{dev}; torch {torch.__version__}; torch_geometric {torch_geometric.__version__}"


# ---------------------------------------------------------------------------- CLI
def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gatattn bench``."""
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, no torch.compile (a smoke run)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument(
        "--dtype", default=None, help="comma list of fp32,bf16 (default: fp32, +bf16 on CUDA)"
    )
    parser.add_argument("--cases", default="P1,P2,P3,P4", help="comma list of P1..P4")
    parser.add_argument("--channels", type=int, default=512, help="C (default 512)")
    parser.add_argument("--heads", type=int, default=8, help="H (default 8)")
    parser.add_argument("--n1", type=int, default=None, help="P1 tokens (1024)")
    parser.add_argument("--n2", type=int, default=None, help="P2 tokens (8192 CPU, 16384 CUDA)")
    parser.add_argument("--window", type=int, default=None, help="P2 window w (128)")
    parser.add_argument("--n3", type=int, default=None, help="P3 tokens (16384)")
    parser.add_argument("--degree", type=int, default=None, help="P3 in-degree (64)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile'd PyG")
    parser.add_argument("--max-pyg-edges", type=int, default=None, help="skip PyG above this E")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    parser.add_argument("--markdown", default=None, help="also write the Markdown table here")


def _config(args: argparse.Namespace) -> Config:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch.cuda.is_available() is False")
    dtypes = tuple((args.dtype or ("fp32,bf16" if device == "cuda" else "fp32")).split(","))
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise UsageError(f"unknown dtype {bad[0]!r}; choose from {sorted(DTYPES)}")
    cases = tuple(c.strip().upper() for c in args.cases.split(","))
    for c in cases:
        if c not in ("P1", "P2", "P3", "P4"):
            raise UsageError(f"unknown case {c!r}; choose from P1, P2, P3, P4")
    if args.channels % args.heads:
        raise UsageError(f"--channels {args.channels} is not divisible by --heads {args.heads}")
    cuda = device == "cuda"
    quick = args.quick
    cfg = Config(
        device=device,
        dtypes=dtypes,
        cases=cases,
        channels=args.channels,
        heads=args.heads,
        n1=args.n1 or (128 if quick else 1024),
        n2=args.n2 or (512 if quick else 16384 if cuda else 8192),
        window=args.window or (16 if quick else 128),
        n3=args.n3 or (1024 if quick else 16384),
        degree=args.degree or (16 if quick else 64),
        repeat=args.repeat or (1 if quick else 20 if cuda else 5),
        compile=not (args.no_compile or quick),
        max_pyg_edges=args.max_pyg_edges or (50_000_000 if cuda else 1_100_000),
        max_sdpa_nodes=16384 if cuda else 8192,
        p4_nodes=512 if quick else 4096,
        p4_sizes=(8, 16, 32, 64) if quick else (32, 64, 128, 256),
    )
    for name in ("n1", "n2", "window", "n3", "degree", "repeat"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table (exit code 0)."""
    cfg = _config(args)
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    print(f"# gatattn bench on {machine()}", flush=True)
    where = machine()

    def save(rows: list[Row]) -> None:
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(f"Machine: {where}\n\n{markdown(rows)}\n")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": where, "rows": [asdict(r) for r in rows]}, f, indent=1)

    rows = run_cases(cfg, save)
    print("\n" + markdown(rows))
    return 0
