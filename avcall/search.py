"""``avcall search``: encoder architecture search (AVE-NAS) and its latency lookup table."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import HelpFormatter, command_line, non_negative_float, non_negative_int, positive_float, positive_int

SEARCH_EPILOG = """\
examples:
  avcall search encoder --identity S1 --target-ms 5 --minutes 90 --out runs/search/S1-5ms
  avcall search encoder --identity S1 --target-ms 5 --out runs/search/S1-5ms      # again: resumes
  avcall search encoder --identity S1 --target-ms 5 --latency flops --out runs/search/S1-flops
  # one weight warm-up shared by several targets:
  avcall search encoder --identity S1 --target-ms 8 --warmup-frac 1 --minutes 30 --out runs/search/S1-warm
  avcall search encoder --identity S1 --target-ms 5 --warmup-frac 0 --warm-start runs/search/S1-warm \
      --minutes 25 --out runs/search/S1-5ms
"""

LUT_EPILOG = """\
examples:
  avcall search lut --json --out-dir docs/results
  avcall search lut --archs 8 --table /tmp/lut.json --out-dir /tmp/lut
  avcall search lut --fresh --json --out-dir docs/results     # every entry measured again, then the check
"""

BENCH_EPILOG = """\
examples:
  avcall search bench --identity S1                       # 300 archs, 80 trained, local Ray on this machine
  avcall search bench --identity S1 --address auto        # the same trials on a running Ray cluster
  avcall search bench --archs 40 --trained 8 --steps 50 --out runs/nas/small --data-file /tmp/bench.json
"""

PREDICTOR_EPILOG = """\
examples:
  avcall eval predictor --json --out-dir docs/results
  avcall eval predictor --bench /tmp/bench.json --portions 4,6 --splits 3 --budget 4 --runs 3
"""

DEFAULT_TABLE = Path("runs") / "ave" / "lut_1thread.json"
DEFAULT_BENCH = Path("docs") / "results" / "ave_bench.json"


def register(sub) -> None:
    p = sub.add_parser("search", help="encoder architecture search (AVE-NAS): latency table, benchmark",
                       description="Searching per-view HMC encoders: the latency lookup table the search costs "
                                   "architectures with.")
    ss = p.add_subparsers(dest="search_command", metavar="WHAT")
    ss.required = True
    from encoder.search import SearchConfig

    d = SearchConfig()
    e = ss.add_parser(
        "encoder", help="search per-view HMC encoders under a latency target (AVE-NAS)",
        description="A weight-sharing supernet per HMC view, trained on the identity's range-of-motion data with "
                    "the extreme-expression-aware Auto-CARD loss; operators, kernels, widths, depths, head and "
                    "pooling are searched by Gumbel-softmax, each view's input resolution by REINFORCE, against "
                    "the latency lookup table (one thread, this machine). Checkpoints and resumes; writes arch.json, "
                    "choice.json, search_log.jsonl and search_trajectory.png into --out.",
        epilog=SEARCH_EPILOG, formatter_class=HelpFormatter)
    e.add_argument("--identity", default=d.identity, help="studio identity whose data and decoder are used "
                   "(default: %(default)s)")
    e.add_argument("--target-ms", type=positive_float, required=True, metavar="MS",
                   help="latency target of the whole encoder (3 views + fusion, one thread, LUT-predicted; with "
                        "--latency flops: MFLOPs)")
    e.add_argument("--minutes", type=positive_float, default=d.time_budget_s / 60, metavar="M",
                   help="wall-clock budget, counting earlier runs of a resumed search (default: %(default)g)")
    e.add_argument("--steps", type=positive_int, default=d.steps, help="step limit (default: %(default)s)")
    e.add_argument("--out", required=True, metavar="DIR", help="search directory (resumes when it has a checkpoint)")
    e.add_argument("--name", default=d.name, help="name of the searched architecture (default: %(default)s)")
    e.add_argument("--lam", type=non_negative_float, default=d.lam,
                   help="weight of the latency hinge relu(L / target - 1) (default: %(default)s)")
    e.add_argument("--tau", type=positive_float, default=d.tau,
                   help="temperature of the extreme-expression re-weighting, radians of gaze (default: %(default)s)")
    e.add_argument("--no-reweight", action="store_true", help="no extreme-expression re-weighting (ablation)")
    e.add_argument("--shared", action="store_true", help="one architecture for all three views (ablation)")
    e.add_argument("--fixed-resolution", type=positive_int, default=0, metavar="R",
                   help="search at this input resolution only, e.g. 192 (ablation; default: searched)")
    e.add_argument("--latency", choices=("lut", "flops"), default=d.latency,
                   help="cost model: the measured latency table or MFLOPs (ablation) (default: %(default)s)")
    e.add_argument("--table", default=str(DEFAULT_TABLE), metavar="PATH",
                   help="latency table cache (default: %(default)s)")
    e.add_argument("--warmup-frac", type=non_negative_float, default=d.warmup_frac, metavar="F",
                   help="share of the steps that train only the supernet weights (default: %(default)s; 1 = a "
                        "warm-up run other searches start from with --warm-start)")
    e.add_argument("--warm-start", default="", metavar="DIR",
                   help="start from the supernet weights of the search in DIR (e.g. a --warmup-frac 1 run), so "
                        "several targets share one weight warm-up")
    e.add_argument("--arch-lr", type=positive_float, default=d.arch_lr,
                   help="Adam step of the architecture logits; raise it for short searches (default: %(default)s)")
    e.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="(default: %(default)s)")
    e.add_argument("--seed", type=non_negative_int, default=d.seed, help="(default: %(default)s)")
    e.add_argument("--workers", type=positive_int, default=1, help="processes rendering the data on first use "
                   "(default: %(default)s)")
    e.add_argument("--threads", type=positive_int, default=d.threads, help="torch intra-op threads (default: %(default)s)")
    e.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out and start over")
    e.set_defaults(func=_search)
    g = ss.add_parser(
        "register", help="add a searched architecture to the registry (avcall train encoder --arch NAME)",
        description="Copies DIR/arch.json into encoder/archs/NAME.json, the registry of searched architectures "
                    "shipped with avcall; then 'avcall train encoder --arch NAME' trains it like a baseline.",
        epilog="example:\n  avcall search register runs/search/S1-5ms --as AVE-S\n", formatter_class=HelpFormatter)
    g.add_argument("dir", metavar="DIR", help="a finished search directory (holds arch.json)")
    g.add_argument("--as", dest="name", required=True, metavar="NAME", help="registry name, e.g. AVE-S")
    g.set_defaults(func=_register)
    from encoder.nas.bench import BenchConfig

    bd = BenchConfig()
    b = ss.add_parser(
        "bench", help="the avatar-encoder benchmark (trained architectures of the search space) on Ray",
        description="Samples architectures of the AVE-NAS space; gives each MFLOPs, parameters, the LUT latency and "
                    "its supernet-inherited quality; trains the first --trained of them standalone with a short "
                    "fixed schedule (ground truth: face-pixel MSE on held-out frames, measured latency). Every "
                    "training is one Ray task (local Ray with --workers CPUs, or a cluster with --address); results "
                    "are appended to OUT as they finish and a stopped run resumes. Writes the benchmark to "
                    "--data-file.",
        epilog=BENCH_EPILOG, formatter_class=HelpFormatter)
    b.add_argument("--identity", default=bd.identity, help="(default: %(default)s)")
    b.add_argument("--archs", type=positive_int, default=bd.archs, help="architectures sampled (default: %(default)s)")
    b.add_argument("--trained", type=non_negative_int, default=bd.trained,
                   help="of them trained standalone (default: %(default)s)")
    b.add_argument("--steps", type=positive_int, default=bd.steps, help="standalone training steps, batch "
                   f"{bd.batch_size} (default: %(default)s)")
    b.add_argument("--eval-frames", type=positive_int, default=bd.eval_frames,
                   help="held-out frames of the ground truth (default: %(default)s)")
    b.add_argument("--supernet", default=bd.supernet, metavar="DIR",
                   help="search directory whose supernet gives the inherited quality; '' for none "
                        "(default: %(default)s)")
    b.add_argument("--seed", type=non_negative_int, default=bd.seed, help="sampling seed (default: %(default)s)")
    b.add_argument("--out", default="runs/nas/S1", metavar="DIR",
                   help="trial directory: results so far, checkpoints (default: %(default)s)")
    b.add_argument("--data-file", default=str(DEFAULT_BENCH), metavar="PATH",
                   help="the benchmark's versioned data file (default: %(default)s)")
    b.add_argument("--address", default=None,
                   help="Ray cluster to run the trials on ('auto': the one this machine belongs to; default: a local "
                        "Ray with --workers CPUs)")
    b.add_argument("--workers", type=positive_int, default=2, help="CPUs of the local Ray (default: %(default)s)")
    b.add_argument("--table", default=str(DEFAULT_TABLE), metavar="PATH", help="latency table (default: %(default)s)")
    b.set_defaults(func=_bench)
    t = ss.add_parser(
        "lut", help="fill the latency lookup table and check it against whole architectures",
        description="Times every building block the sampled architectures need (each its own ONNX model, "
                    "onnxruntime, one intra-op thread), predicts whole encoders' latency from the table, and "
                    "measures them (random architectures, the EEM baselines and the registered AVE encoders): "
                    "Pearson r and mean absolute error in percent, plus a scatter plot.",
        epilog=LUT_EPILOG, formatter_class=HelpFormatter)
    t.add_argument("--archs", type=positive_int, default=24, help="random architectures of the search space "
                   "(the EEM baselines are always added) (default: %(default)s)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default: %(default)s)")
    t.add_argument("--table", default=str(DEFAULT_TABLE), metavar="PATH",
                   help="the table's JSON cache: entries measured before are reused (default: %(default)s)")
    t.add_argument("--out-dir", default="", metavar="DIR",
                   help="write ave_lut.json and ave_lut.png here (default: print only)")
    t.add_argument("--fresh", action="store_true",
                   help="measure again every entry the table holds before the check (run it on an idle machine)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=_lut)


def _search(args: argparse.Namespace) -> int:
    from capture.identity import check_identity
    from decoder.export import load_vae
    from encoder.lut import LatencyTable
    from encoder.search import FlopTable, SearchConfig, run_search
    from encoder.train import load_rom_data

    check_identity(args.identity)
    cfg = SearchConfig(identity=args.identity, name=args.name, target_ms=args.target_ms, lam=args.lam,
                       latency=args.latency, reweight=not args.no_reweight, shared=args.shared,
                       fixed_resolution=args.fixed_resolution, tau=args.tau, batch_size=args.batch_size,
                       steps=args.steps, time_budget_s=args.minutes * 60, seed=args.seed,
                       warmup_frac=args.warmup_frac, warm_start=args.warm_start, threads=args.threads,
                       arch_lr=args.arch_lr)
    table = LatencyTable(args.table) if args.latency == "lut" else FlopTable()
    vae = load_vae(args.identity)
    train, _ = load_rom_data(args.identity, workers=args.workers, progress=True)
    r = run_search(args.out, cfg, data=train, vae=vae, table=table, resume=not args.fresh, progress=True)
    unit = "ms" if args.latency == "lut" else "MFLOPs"
    print(f"search {args.out}: {r.steps} steps in {r.elapsed_s / 60:.1f} min; {args.name}: predicted "
          f"{r.predicted_ms:.2f} {unit} (target {args.target_ms:g}); wrote {Path(args.out) / 'arch.json'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from capture.identity import check_identity
    from encoder.bench import machine_description
    from encoder.nas.bench import BenchConfig, run_benchmark, write_bench

    check_identity(args.identity)
    cfg = BenchConfig(identity=args.identity, archs=args.archs, trained=args.trained, steps=args.steps,
                      eval_frames=args.eval_frames, supernet=args.supernet, seed=args.seed)
    bench = run_benchmark(cfg, args.out, address=args.address, workers=args.workers, lut_path=args.table)
    path = write_bench(bench, args.data_file, machine=machine_description(),
                       command=command_line("bench", "avcall search bench"))
    n = sum(1 for a in bench["archs"] if a.get("trained"))
    print(f"benchmark {args.identity}: {len(bench['archs'])} architectures, {n} trained -> {path}")
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser(
        "predictor", help="Kendall tau of CARL, a GCN and simple proxies on the encoder benchmark; guided search",
        description="Trains CARL and a plain GCN on a portion of the benchmark's trained architectures and ranks the "
                    "others (Kendall tau, several random splits), next to MFLOPs, LUT latency, parameters and the "
                    "supernet-inherited quality; then compares CARL-guided evolution, random and supernet-guided "
                    "search at the same number of standalone trainings. Writes carl.{json,md,png} with --out-dir.",
        epilog=PREDICTOR_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--bench", default=str(DEFAULT_BENCH), metavar="PATH", help="benchmark file (default: %(default)s)")
    p.add_argument("--portions", default="10,20,40", metavar="N,N",
                   help="training portions, trained architectures (default: %(default)s)")
    p.add_argument("--splits", type=positive_int, default=5, help="random splits per portion (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=300, help="predictor training epochs (default: %(default)s)")
    p.add_argument("--budget", type=positive_int, default=10, help="search: standalone trainings (default: %(default)s)")
    p.add_argument("--runs", type=positive_int, default=10, help="search runs (default: %(default)s)")
    p.add_argument("--target-ms", type=positive_float, default=None,
                   help="search: latency target, LUT ms (default: the trained architectures' median)")
    p.add_argument("--out-dir", default="", metavar="DIR", help="write carl.{json,md,png} here (default: print only)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_predictor)


def _predictor(args: argparse.Namespace) -> int:
    import torch

    from avcore.errors import UsageError
    from encoder.bench import machine_description
    from encoder.nas.bench import read_bench
    from encoder.nas.evaluate import ranking, render_markdown, search_comparison, write_results

    torch.set_num_threads(1)
    try:
        portions = [int(x) for x in args.portions.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--portions: comma-separated integers, got {args.portions!r}") from None
    bench = read_bench(args.bench)
    try:
        res = {"portions": ranking(bench, portions, args.splits, epochs=args.epochs),
               "search": search_comparison(bench, budget=args.budget, runs=args.runs, target_ms=args.target_ms)}
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    res |= {"bench": args.bench, "archs": len(bench["archs"]),
            "trained": sum(1 for a in bench["archs"] if a.get("trained")), "machine": machine_description(),
            "command": command_line("predictor", f"avcall eval predictor --bench {args.bench}")}
    if args.out_dir:
        write_results(res, args.out_dir)
    print(json.dumps(res) if args.json else render_markdown(res))
    return 0


def _register(args: argparse.Namespace) -> int:
    from avcore.errors import UsageError
    from encoder.arch import install_arch

    src = Path(args.dir) / "arch.json"
    if not src.is_file():
        raise UsageError(f"{src} missing: is {args.dir} a finished search directory?")
    try:
        out = install_arch(src, args.name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"registered {args.name}: wrote {out}; train it with 'avcall train encoder --arch {args.name} --identity S1'")
    return 0


def _lut(args: argparse.Namespace) -> int:
    from encoder.lut import BASELINES, LatencyTable, check_lut, plot_lut

    from encoder.arch import list_archs

    table = LatencyTable(args.table)
    if args.fresh:
        table.remeasure()
    cmd = command_line("search", "avcall search lut --json --out-dir docs/results")
    include = (*BASELINES, *sorted(a for a in list_archs() if a.startswith("AVE")))
    r = check_lut(args.archs, seed=args.seed, table=table, progress=True, command=cmd, include=include)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from runtime.telemetry import json_safe

        (out / "ave_lut.json").write_text(json.dumps(json_safe(r), indent=1))
        plot_lut(r, out / "ave_lut.png")
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "points"}))
    else:
        print(f"latency table: {r['n']} architectures, Pearson r {r['pearson_r']:.3f}, mean |error| "
              f"{r['mean_abs_pct_error']:.1f}% ({r['entries']} entries in {args.table})")
    if args.out_dir:
        print(f"wrote {Path(args.out_dir) / 'ave_lut.json'} and {Path(args.out_dir) / 'ave_lut.png'}")
    return 0
