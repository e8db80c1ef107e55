"""The benchmark harness: gatattn against its peers, side by side in one process.

Run it as ``python benchmarks/bench.py`` (or ``gatattn bench`` from a source checkout); the cases
and the measured tables are in docs/benchmarks.md. Every method is a full attention layer with the
same Q/K/V/O projections (C → C, H heads):

    gatattn (auto)       ga.GraphAttention(backend="auto"); the chosen backend is shown
    gatattn edge/block   ga.GraphAttention with that backend forced
    SDPA                 F.scaled_dot_product_attention on the full N×N (no mask)
    masked SDPA          the same with the graph's boolean mask [N, N]
    nn.MHA               nn.MultiheadAttention with the same weights (need_weights=False)
    PyG eager / compile  torch_geometric.nn.TransformerConv (+ an output Linear), eager and torch.compile
    FlexAttention        flex_attention with the graph's BlockMask (CUDA)

The peers are written here, with their own projections; gatattn runs only through its public layer.

Cases: P1 complete graph, P2 ±w window, P3 random in-degree d, P4 peak memory against E for the
edge and block backends, P5 dispatch cost (the same layer with ``backend="auto"`` against the
backend that auto should pick, forced). Reported: median time of forward (no grad) and
forward+backward, and the peak memory of forward+backward above the live tensors (CUDA:
max_memory_allocated; CPU: the process's peak resident set, Linux only, see ``_cpu_peak_mib``).
Results cross process boundaries as JSON only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gatattn as ga
from gatattn.cli import UsageError, progress_bar
from gatattn.cli.options import check_output_file, check_positive

__all__ = ["Config", "Row", "configure", "markdown", "p4_point", "run", "run_cases"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CASES = ("P1", "P2", "P3", "P4", "P5")


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
    cases: tuple[str, ...] = CASES
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
    p5_channels: int = 256
    p5_heads: int = 8
    p5_nodes: int = 32768  # (a) random in-degree p5_degree: E = 2.1 M
    p5_degree: int = 64
    p5_window_nodes: int = 8192  # (b) window_graph(p5_window_nodes, p5_window)
    p5_window: int = 128
    rows: list[Row] = field(default_factory=list)


# ---------------------------------------------------------------------------- measurement
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _cpu_peak_mib(fn: Callable[[], Any]) -> float | None:
    """Peak resident memory of ``fn()`` above the resident memory before it, in MiB.

    Linux only. The kernel keeps the process's peak resident set (VmHWM in /proc/self/status);
    writing "5" to /proc/self/clear_refs resets it to the current resident set (proc(5)), so the
    peak of ``fn`` alone can be read afterwards. glibc's ``malloc_trim`` first hands freed heap
    pages back, so that the base is clean. Elsewhere (macOS, Windows, a kernel or container that
    refuses the write) there is no resettable peak: None, shown as "—", never a wrong number.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the base may include freed pages, the peak is still right
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib("VmRSS:")
        fn()
        return (_status_kib("VmHWM:") - base) / 1024
    except OSError:
        return None


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def peak_memory_mib(fn: Callable[[], Any], device: str) -> float | None:
    """Peak memory of ``fn()`` above what was live before, in MiB (None if unmeasurable)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return _cpu_peak_mib(fn)


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


def _flex(graph: ga.TokenGraph, device: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dense = graph.to(device).to_dense_mask()  # [N, N] bool, SDPA convention

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return dense[q_idx, kv_idx]

    bm = create_block_mask(mask_mod, None, None, graph.num_dst, graph.num_src, device=device)
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


Method = tuple[str, Callable[[Tensor], Tensor]]


def _on(layer: nn.Module, graph: ga.TokenGraph) -> Callable[[Tensor], Tensor]:
    """``x -> layer(x, graph)``, bound now (not to a loop variable)."""
    return lambda x: layer(x, graph)


def _chosen(layer: ga.GraphAttention, x: Tensor, graph: ga.TokenGraph) -> tuple[str, str]:
    """(backend, "<backend>: <reason>") that ``layer(x, graph)`` runs, with the reasons of the
    backend just before it in the priority list (the one it was preferred to)."""
    first, *rest = layer.explain_backend(x, graph).splitlines()
    rows = [line.strip() for line in rest[1:]]  # "<backend>: <reasons>" in priority order
    name = first.split(":", 1)[0]
    at = [r.split(":", 1)[0] for r in rows].index(name) if rows else 0
    return name, first + (f" (passed over {rows[at - 1]})" if at > 0 else "")


def _methods(cfg: Config, case: str, graph: ga.TokenGraph, x: Tensor) -> list[Method]:
    """(name, callable(x) -> out [N, C]) for every method that applies to this case."""
    c, h, dev, dtype = cfg.channels, cfg.heads, cfg.device, x.dtype
    out: list[Method] = []

    def to(m: nn.Module) -> nn.Module:
        return m.to(dev, dtype)

    auto = ga.GraphAttention(c, h).to(dev, dtype)
    chosen, _ = _chosen(auto, x, graph)
    out.append((f"gatattn auto ({chosen})", lambda x: auto(x, graph)))
    for name in ("edge", "block"):
        if name == chosen or (name == "block" and not case.startswith("P2")):
            continue
        if name == "edge" and graph.num_edges > cfg.max_pyg_edges:  # as slow as PyG eager on CPU
            continue
        layer = to(ga.GraphAttention(c, h, backend=name))
        out.append((f"gatattn {name}", _on(layer, graph)))
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


def _input(cfg: Config, graph: ga.TokenGraph, channels: int, dtype_name: str) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(graph.num_dst, channels, generator=gen)  # [N, C]
    return x.to(cfg.device, DTYPES[dtype_name])


def _measure(
    cfg: Config, case: str, dtype_name: str, x0: Tensor, methods: list[Method]
) -> list[Row]:
    """Time and measure every method on input ``x0``; the timed rounds interleave the methods,
    so that a change in background load hits them all alike. Returns (and prints) the rows."""
    x = x0.clone().requires_grad_()
    runs: list[tuple[Row, Callable[[], None], Callable[[], None]]] = []
    first: dict[int, list[float]] = {}
    k0 = len(cfg.rows)
    for name, fn in progress_bar(methods, desc=f"{case.split()[0]} warm-up"):
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
    for _ in progress_bar(range(cfg.repeat), desc=f"{case.split()[0]} timed rounds"):
        for row, run_fwd, run_fwdbwd in runs:
            for k, f in enumerate((run_fwd, run_fwdbwd)):
                if first[id(row)][k] <= 5.0:  # slower methods: the warm-up is the measurement
                    samples[id(row)][k].append(_timed(f, cfg.device))
    for row, _, _ in runs:
        fwd_s, fb_s = (s or [first[id(row)][k]] for k, s in enumerate(samples[id(row)]))
        row.fwd_ms, row.fwdbwd_ms = 1e3 * statistics.median(fwd_s), 1e3 * statistics.median(fb_s)
    for row in cfg.rows[k0:]:
        print(_format_row(row), flush=True)
    return cfg.rows[k0:]


def _timed(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- cases
def random_graph(n: int, degree: int, seed: int, device: str = "cpu") -> ga.TokenGraph:
    """An irregular graph: every target has in-degree ``degree`` from uniform random sources."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (n * degree,), generator=gen)  # [E]
    dst = torch.arange(n).repeat_interleave(degree)  # [E]
    return ga.TokenGraph(torch.stack([src, dst]).to(device), n, n)


def _graphs(cfg: Config, case: str) -> list[tuple[str, ga.TokenGraph]]:
    dev = cfg.device
    if case == "P1":
        return [(f"P1 complete N={cfg.n1}", ga.complete_graph(cfg.n1, device=dev))]
    if case == "P2":
        g = ga.window_graph(cfg.n2, cfg.window, device=dev)
        return [(f"P2 window ±{cfg.window} N={cfg.n2}", g)]
    if case == "P3":
        g = random_graph(cfg.n3, cfg.degree, seed=0, device=dev)
        return [(f"P3 random in-degree {cfg.degree} N={cfg.n3}", g)]
    raise UsageError(f"unknown case {case!r}; choose from {', '.join(CASES)}")


def _p4_graph(backend: str, n: int, size: int, device: str) -> ga.TokenGraph:
    """P4's graph: random in-degree ``size`` (edge backend) or a ±size/2 window (block)."""
    if backend == "block":
        return ga.window_graph(n, size // 2, device=device)
    return random_graph(n, size, seed=size, device=device)


def p4_point(backend: str, n: int, size: int, c: int, h: int, device: str) -> dict[str, Any]:
    """``{"edges": E, "peak_mib": MiB or None}`` of one forward+backward of a fresh layer
    (on CPU, run in a fresh process: ``_p4_point_in_subprocess``)."""
    g = _p4_graph(backend, n, size, device)
    x = torch.randn(n, c, device=device).requires_grad_()
    layer = ga.GraphAttention(c, h, backend=backend).to(device)

    def step() -> None:
        layer(x, g).square().mean().backward()
        x.grad = None

    if device == "cuda":
        step()  # warm-up: CUDA context and kernels are not part of the peak
    return {"edges": g.num_edges, "peak_mib": peak_memory_mib(step, device)}


# The child imports this file from its folder and the same gatattn as this process, calls
# p4_point with the JSON keyword arguments in argv[2], and prints the result as one JSON line.
_CHILD = """\
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from harness import p4_point
kwargs = json.loads(sys.argv[2])
torch.set_num_threads(kwargs.pop("threads"))
print(json.dumps(p4_point(**kwargs)))
"""


def _p4_point_in_subprocess(**kwargs: Any) -> dict[str, Any]:
    """``p4_point(**kwargs)`` in a fresh Python process; the result comes back as JSON."""
    here = str(Path(__file__).resolve().parent)
    root = str(Path(ga.__file__).resolve().parents[1])  # the folder that holds this gatattn
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    payload = json.dumps({**kwargs, "threads": torch.get_num_threads()})
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, here, payload],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return parse_result(res.stdout)


def parse_result(stdout: str) -> dict[str, Any]:
    """The JSON object on the last line of a child's stdout (earlier lines may be warnings)."""
    lines = stdout.strip().splitlines()
    if not lines:
        raise ValueError("the benchmark child printed nothing")
    data = json.loads(lines[-1])
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object from the benchmark child, got {lines[-1]!r}")
    return data


def _p4(cfg: Config) -> None:
    """Peak forward+backward memory of the edge and block backends as E grows (fp32).

    On CPU every point runs in a fresh Python process, so that no allocator state of an earlier
    point hides or inflates its peak resident set.
    """
    n, c, h = cfg.p4_nodes, cfg.channels, cfg.heads
    for backend in ("edge", "block"):
        pts = []
        for size in progress_bar(cfg.p4_sizes, desc=f"P4 {backend}"):
            kwargs = dict(backend=backend, n=n, size=size, c=c, h=h, device=cfg.device)
            if cfg.device == "cpu" and cfg.p4_subprocess:
                point = _p4_point_in_subprocess(**kwargs)
            else:
                point = p4_point(**kwargs)
            e, mib = int(point["edges"]), point["peak_mib"]
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


def _p5_graphs(cfg: Config) -> list[tuple[str, ga.TokenGraph, str]]:
    """(title, graph, the backend auto should pick) of the dispatch-cost case."""
    n, d, nw, w = cfg.p5_nodes, cfg.p5_degree, cfg.p5_window_nodes, cfg.p5_window
    # on CUDA the best path for a band is FlexAttention, elsewhere the block-sparse torch path
    band = "flex" if cfg.device == "cuda" else "block"
    return [
        (f"P5 dispatch random in-degree {d} N={n}", random_graph(n, d, 0, cfg.device), "edge"),
        (f"P5 dispatch window ±{w} N={nw}", ga.window_graph(nw, w, device=cfg.device), band),
    ]


def _p5(cfg: Config, dtype_name: str) -> None:
    """Dispatch cost: one layer (C=256, H=8) with ``backend="auto"`` against a copy of it with
    the best backend forced, fwd+bwd; auto ÷ forced for time and peak memory, and auto's reason."""
    c, h = cfg.p5_channels, cfg.p5_heads
    for title, graph, best in _p5_graphs(cfg):
        print(f"\n## {title}, C={c}, H={h}, {dtype_name}", flush=True)
        x = _input(cfg, graph, c, dtype_name)
        auto = ga.GraphAttention(c, h, backend="auto").to(cfg.device, x.dtype)
        forced = ga.GraphAttention(c, h, backend=best).to(cfg.device, x.dtype)
        forced.load_state_dict(auto.state_dict())  # the same weights: only dispatch differs
        chosen, why = _chosen(auto, x, graph)
        methods: list[Method] = [
            (f"gatattn auto ({chosen})", _on(auto, graph)),
            (f"gatattn {best} (forced)", _on(forced, graph)),
        ]
        rows = _measure(cfg, title, dtype_name, x, methods)
        a, f = rows
        ratio = [
            None if u is None or v is None or not v else u / v
            for u, v in ((a.fwdbwd_ms, f.fwdbwd_ms), (a.peak_mib, f.peak_mib))
        ]
        a.note = f"auto ÷ forced: fwd+bwd {_fmt(ratio[0], 2)}×, peak {_fmt(ratio[1], 2)}×; {why}"
        print(f"  {a.note}", flush=True)


def run_cases(cfg: Config, on_case: Callable[[list[Row]], None] | None = None) -> list[Row]:
    """Run the configured cases; rows are printed as they come and returned. ``on_case(rows)``
    runs after each case (the CLI rewrites its output files, so a run cut short keeps them)."""
    for case in cfg.cases:
        if case == "P4":
            _p4(cfg)
        elif case == "P5":
            for dt in cfg.dtypes:
                _p5(cfg, dt)
        else:
            for title, graph in _graphs(cfg, case):
                for dt in cfg.dtypes:
                    print(f"\n## {title}, C={cfg.channels}, H={cfg.heads}, {dt}", flush=True)
                    x = _input(cfg, graph, cfg.channels, dt)
                    _measure(cfg, title, dt, x, _methods(cfg, title, graph, x))
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
    """Arguments of ``python benchmarks/bench.py`` and ``gatattn bench``."""
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, no torch.compile (a smoke run)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument(
        "--dtype", default=None, help="comma list of fp32,bf16 (default: fp32, +bf16 on CUDA)"
    )
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of P1..P5")
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
        if c not in CASES:
            raise UsageError(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    for option in ("channels", "heads"):
        check_positive(getattr(args, option), f"--{option}")
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
        p5_nodes=2048 if quick else 32768,
        p5_degree=16 if quick else 64,
        p5_window_nodes=1024 if quick else 8192,
        p5_window=16 if quick else 128,
    )
    for name in ("n1", "n2", "window", "n3", "degree", "repeat", "max_pyg_edges"):
        if getattr(args, name) is not None:  # 0 is given, not a default
            check_positive(getattr(args, name), f"--{name.replace('_', '-')}")
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table (exit code 0)."""
    cfg = _config(args)
    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path:  # checked before the run: a bad path would otherwise fail after all of it
            check_output_file(path, option)
    if args.threads is not None:
        check_positive(args.threads, "--threads")
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
