"""``avcall train|eval|bench encoder`` and ``avcall eval table``: HMC encoder jobs.

Each ``add_*`` receives the second-level subparsers of its top-level command.
Handlers parse nothing themselves and call one library function in ``encoder/``;
heavy imports (torch) happen inside the handlers.
"""
from __future__ import annotations

import argparse
import json


from runtime.telemetry import json_safe

from .args import HelpFormatter, command_line, positive_float, positive_int

TRAIN_EPILOG = """\
examples:
  avcall train encoder --arch EEM --identity S1
  avcall train encoder --arch EEM-res50 --identity S2 --no-reweight --steps 1000
  avcall train encoder --arch EEM --identity S1      # again: resumes from DIR/checkpoint.pt (--fresh starts over)
"""

EVAL_EPILOG = """\
examples:
  avcall eval encoder --arch EEM --identity S1 --json
  avcall eval encoder --model-dir runs/encoder/S1/EEM --frames 60 --attribute
"""

TABLE_EPILOG = """\
examples:
  avcall eval table --identities S1,S2,S3 --models EEM,EEM-ch50,EEM-res50 --out docs/results/
  avcall eval table --identities S1 --models EEM-flat --runs runs/encoder --decoders decoder/models --frames 60
"""

BENCH_EPILOG = """\
examples:
  avcall bench encoder --arch EEM --json
  avcall bench encoder --model-dir runs/encoder/S1/EEM --runs 500
"""


def add_train(sub) -> None:
    p = sub.add_parser(
        "encoder",
        help="train an HMC encoder (EEM family) against an identity's trained decoder",
        description="Train a view-decoupled HMC encoder with the Auto-CARD loss (latent, gaze, geometry, texture, "
        "keypoints, rendering) and the extreme-expression-aware re-weighting. Renders and caches the identity's HMC "
        "data on first use; resumes from DIR/checkpoint.pt (Ctrl-C writes it and stops); writes arch.json, encoder.pt "
        "and one ONNX model per view plus fusion into DIR.",
        epilog=TRAIN_EPILOG, formatter_class=HelpFormatter,
    )
    p.add_argument("--arch", default="EEM", help="registered architecture (EEM, EEM-ch50, EEM-res50, EEM-flat, tiny)")
    p.add_argument("--identity", default="S1", help="studio identity")
    p.add_argument("--out", default=None, help="run directory (default runs/encoder/IDENTITY/ARCH[-noRW])")
    p.add_argument("--data", default=None, help="HMC data cache .npz (default runs/encoder/data_IDENTITY.npz)")
    p.add_argument("--decoder-dir", default=None, help="trained decoder directory (default decoder/models/IDENTITY)")
    p.add_argument("--rom", action="store_true",
                   help="train and test on the range-of-motion dataset (16 sessions, 35%% extreme segments, half of "
                   "them fast, 20%% asymmetric expressions; cached in runs/encoder/rom_IDENTITY.npz): what Table 1 "
                   "and the embedded encoders use")
    p.add_argument("--train-sessions", type=int, default=8,
                   help="headset sessions rendered for training, 16 s each (other values need their own --data)")
    p.add_argument("--train-extreme-probability", type=float, default=None, metavar="P",
                   help="share of extreme-expression segments in training performances (default: the studio's 0.12; "
                   "needs its own --data)")
    p.add_argument("--steps", type=int, default=4000, help="optimisation steps (the time budget may end the run first)")
    p.add_argument("--time-budget", type=float, default=1800.0, help="wall-clock seconds, counting resumed runs")
    p.add_argument("--batch-size", type=int, default=16, help="frames per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay)")
    p.add_argument("--no-reweight", action="store_true", help="ablation: no extreme-expression-aware re-weighting")
    p.add_argument("--tau", type=float, default=0.25, help="re-weighting temperature (rad)")
    p.add_argument("--momentum", type=float, default=0.99, help="EMA momentum of the mean gaze")
    p.add_argument("--no-augment", action="store_true", help="no online slip/exposure augmentation")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--bf16", action="store_true",
                   help="encoder forward in bfloat16 autocast (~1.4x faster on CPUs with AVX512-BF16)")
    p.add_argument("--workers", type=int, default=1, help="processes that render the data on first use")
    p.add_argument("--seed", type=int, default=0, help="initialisation and sampling seed")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--install", action="store_true", help="copy the result to encoder/models/IDENTITY/ARCH (embedded)")
    p.add_argument("--make-default", action="store_true",
                   help="with --install: the sender's default for IDENTITY from now on (encoder/models/defaults.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_train)


def add_eval(sub) -> None:
    p = sub.add_parser(
        "encoder",
        help="rendered-avatar MSE of a trained encoder on held-out test segments",
        description="Run an exported encoder (onnxruntime) on the identity's held-out test frames, decode predicted and "
        "ground-truth codes and compare the rendered avatars from the front, left and right (MSE, 0..255).",
        epilog=EVAL_EPILOG, formatter_class=HelpFormatter,
    )
    p.add_argument("--arch", default="EEM", help="model name (ARCH or ARCH-noRW) when --model-dir is not given")
    p.add_argument("--identity", default="S1", help="studio identity")
    p.add_argument("--model-dir", default=None, metavar="DIR[,DIR...]",
                   help="exported encoder(s), comma-separated (default: the run, else the embedded model)")
    p.add_argument("--runs", default="runs/encoder", help="root of encoder runs")
    p.add_argument("--decoder-dir", default=None, help="trained decoder of the identity (default decoder/models/IDENTITY)")
    p.add_argument("--data", default=None, metavar="FILE.npz",
                   help="HMC data cache whose test split is evaluated (default: the identity's shared test frames under "
                   "runs/encoder, rendered on first use)")
    p.add_argument("--frames", type=positive_int, default=240, help="test frames evaluated, evenly spaced, >= 1")
    p.add_argument("--size", type=int, default=256, help="render size in pixels")
    p.add_argument("--attribute", action="store_true",
                   help="also split the error: render with only the predicted code (true gaze) and only the predicted "
                        "gaze (true code); three times the renders, not cached")
    p.add_argument("--json", action="store_true", help="print one JSON object (progress still goes to stderr)")
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="also write {'models': [one result per model dir], 'machine', 'command'} to FILE.json")
    p.set_defaults(func=_eval)

    r = sub.add_parser(
        "robustness",
        help="encoder MSE on held-out performances of a new user (fast extremes, asymmetric expressions) vs the test split",
        description="Render performances in headset sessions and with seeds no dataset uses -- frequent fast extreme "
        "expressions, and asymmetric ones (one side of the face only) -- run the exported encoder on them and compare "
        "their rendered MSE (whole frame and face pixels) with the range-of-motion test split's: the ratio shows how "
        "far the test split overstates quality for real users (aim: <= 1.3). Renders are cached under runs/encoder.",
        epilog="examples:\n  avcall eval robustness --identity S1\n"
               "  avcall eval robustness --identity S1 --model-dir runs/encoder/S1/AVE-S --json --out-dir docs/results\n",
        formatter_class=HelpFormatter)
    r.add_argument("--identity", default="S1", help="studio identity (default: %(default)s)")
    r.add_argument("--model-dir", action="append", default=None, metavar="DIR",
                   help="exported encoder; repeat for several (default: the embedded one)")
    r.add_argument("--decoder-dir", default=None, help="trained decoder of the identity (default decoder/models/IDENTITY)")
    r.add_argument("--conditions", default="frequent-fast,asymmetric", help="comma-separated (default: %(default)s)")
    r.add_argument("--seconds", type=positive_float, default=12.0,
                   help="length of each held-out performance, one per session, 3 sessions (default: %(default)s)")
    r.add_argument("--frames", type=positive_int, default=240, help="frames evaluated per set, evenly spaced "
                   "(default: %(default)s)")
    r.add_argument("--size", type=positive_int, default=256, help="render size in pixels (default: %(default)s)")
    r.add_argument("--workers", type=positive_int, default=2, help="processes rendering the range-of-motion data on "
                   "first use (default: %(default)s)")
    r.add_argument("--out-dir", default="", metavar="DIR", help="write robustness.{json,md} here (default: print only)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=_robustness)

    a = sub.add_parser(
        "ablation",
        help="Table 2: AVE-NAS against searches without one of its parts, at the same latency target",
        description="Evaluate the AVE-NAS encoder and the ablation runs RUNS/IDENTITY/{shared,noRW,res192,flops} "
        "(searched with --shared, --no-reweight, --fixed-resolution 192, --latency flops, each trained with the "
        "Table 1 schedule) on the range-of-motion test split; measure their latency in one run; write "
        "OUT/table2.{md,json,png} and the rows' architectures to OUT/table2_archs/.",
        epilog="example:\n  avcall eval ablation --identity S1 --ave runs/table1/seed0/S1/AVE-M --runs runs/table2/seed0 "
               "--out docs/results\n", formatter_class=HelpFormatter)
    a.add_argument("--identity", default="S1", help="studio identity (default: %(default)s)")
    a.add_argument("--ave", required=True, metavar="DIR", help="the trained AVE-NAS encoder the rows compare with")
    a.add_argument("--runs", required=True, metavar="DIR", help="root of the ablation runs (DIR/IDENTITY/ROW)")
    a.add_argument("--out", default="docs/results/", help="output directory (default: %(default)s)")
    a.add_argument("--lut", default="runs/ave/lut_1thread.json", metavar="PATH",
                   help="latency table for the LUT column; '' for none (default: %(default)s)")
    a.add_argument("--data", default=None, metavar="FILE.npz",
                   help="HMC cache whose test split is used (default: the range-of-motion test split)")
    a.add_argument("--decoder-dir", default=None, help="trained decoder (default decoder/models/IDENTITY)")
    a.add_argument("--frames", type=positive_int, default=240, help="test frames, >= 1 (default: %(default)s)")
    a.add_argument("--size", type=positive_int, default=256, help="render size in pixels (default: %(default)s)")
    a.add_argument("--bench-runs", type=positive_int, default=200, help="timed onnxruntime runs per model "
                   "(default: %(default)s)")
    a.set_defaults(func=_ablation)

    t = sub.add_parser(
        "table",
        help="the Auto-CARD Table 1: MFLOPs, latency and rendered MSE per model and identity",
        description="Evaluate trained encoders of several identities and write OUT/table1.md, OUT/table1.json and "
        "OUT/table1.png (rows of other models already in table1.json are kept).",
        epilog=TABLE_EPILOG, formatter_class=HelpFormatter,
    )
    t.add_argument("--identities", default="S1,S2,S3", help="comma-separated identities")
    t.add_argument("--models", default="EEM,EEM-ch50,EEM-res50", help="model names: ARCH or ARCH-noRW (ablation)")
    t.add_argument("--out", default="docs/results/", help="output directory")
    t.add_argument("--runs", default="runs/encoder", help="root of encoder runs (RUNS/IDENTITY/MODEL)")
    t.add_argument("--decoders", default=None, metavar="DIR",
                   help="one trained decoder per identity, DIR/IDENTITY (default decoder/models)")
    t.add_argument("--data-dir", default=None, metavar="DIR",
                   help="each identity's test data, DIR/test_IDENTITY.npz or DIR/data_IDENTITY.npz (default: the shared "
                   "caches under runs/encoder, rendered on first use)")
    t.add_argument("--rom", action="store_true",
                   help="evaluate on the range-of-motion dataset's test split (runs/encoder/rom_IDENTITY.npz: fast "
                   "extremes and asymmetric expressions), the one Table 1 uses")
    t.add_argument("--seeds", default="", metavar="K,K",
                   help="runs are RUNS/seedK/IDENTITY/MODEL, one per training seed; cells are the mean over the seeds "
                   "found, with their std (default: RUNS/IDENTITY/MODEL, else the embedded model)")
    t.add_argument("--lut", default="runs/ave/lut_1thread.json", metavar="PATH",
                   help="latency table for the LUT-predicted ms column (entries missing from it are measured); "
                   "'' for none (default: %(default)s)")
    t.add_argument("--frames", type=positive_int, default=240, help="test frames per identity, >= 1")
    t.add_argument("--size", type=int, default=256, help="render size in pixels")
    t.add_argument("--bench-runs", type=int, default=200, help="timed onnxruntime runs per model")
    t.set_defaults(func=_table)


def add_bench(sub) -> None:
    p = sub.add_parser(
        "encoder",
        help="onnxruntime latency of an encoder's three view models and fusion",
        description="One intra-op thread, warm-up, then many timed runs of each exported model; prints p50 per stage.",
        epilog=BENCH_EPILOG, formatter_class=HelpFormatter,
    )
    p.add_argument("--arch", default="EEM", help="registered architecture")
    p.add_argument("--model-dir", default=None, help="exported encoder (default: the embedded model if it matches "
                   "--arch, else the architecture with random weights)")
    p.add_argument("--runs", type=int, default=200, help="timed runs")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs first")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_bench)


def _train(args: argparse.Namespace) -> int:
    from avcore.errors import UsageError
    from encoder.train import EncoderTrainConfig, install_embedded, run_training

    tcfg = EncoderTrainConfig(identity=args.identity, batch_size=args.batch_size, lr=args.lr, steps=args.steps,
                              time_budget_s=args.time_budget, reweight=not args.no_reweight, tau=args.tau,
                              momentum=args.momentum, augment=not args.no_augment, threads=args.threads, seed=args.seed,
                              bf16=args.bf16)
    if args.make_default and not args.install:
        raise UsageError("--make-default needs --install")
    data_cfg = None
    data_path = args.data
    if args.rom:
        from encoder.data import rom_data_config
        from encoder.train import rom_data_path

        if args.train_sessions != 8 or args.train_extreme_probability is not None:
            raise UsageError("--rom is its own dataset: drop --train-sessions / --train-extreme-probability")
        data_cfg = rom_data_config(args.identity)
        data_path = args.data or rom_data_path(args.identity)
    elif args.train_sessions != 8 or args.train_extreme_probability is not None:
        from encoder.data import HmcDataConfig

        if not args.data:
            raise UsageError("--train-sessions / --train-extreme-probability build a different dataset: give it its "
                             "own cache with --data FILE.npz")
        data_cfg = HmcDataConfig(identity=args.identity, train_sessions=tuple(range(args.train_sessions)),
                                 train_extreme_probability=args.train_extreme_probability)
    r = run_training(args.identity, args.arch, out_dir=args.out, data_path=data_path, tcfg=tcfg, resume=not args.fresh,
                     workers=args.workers, decoder_dir=args.decoder_dir, data_cfg=data_cfg)
    summary = {"model_dir": str(r.model_dir), "steps": r.steps, "elapsed_s": round(r.elapsed_s, 1),
               "final_losses": r.final_losses, "test": r.meta.get("train", {}).get("test")}
    if args.install:
        summary["installed"] = str(install_embedded(r.model_dir, args.identity, args.arch, make_default=args.make_default))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained {args.arch} for {args.identity}: {r.steps} steps in {r.elapsed_s:.0f} s -> {r.model_dir}")
        if r.final_losses:  # a finished run that was only re-opened (e.g. to --install it) trained no step now
            print("  final losses: " + ", ".join(f"{k} {v:.4g}" for k, v in r.final_losses.items()))
        if summary["test"]:
            print("  test: " + ", ".join(f"{k} {v:.4g}" for k, v in summary["test"].items()))
        if args.install:
            print(f"  installed as the embedded default: {summary['installed']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from decoder.export import load_vae
    from encoder.evaluate import cached_evaluation, evaluate_model_dir
    from encoder.table import find_model_dir
    from encoder.train import load_test_data

    if args.model_dir:
        dirs = _exported_encoders(d for d in args.model_dir.split(",") if d)
    else:
        d = find_model_dir(args.identity, args.arch, Path(args.runs))
        if d is None:
            raise FileNotFoundError(f"no trained {args.arch} encoder for {args.identity}; run 'avcall train encoder' first")
        dirs = [d]
    vae = load_vae(args.identity, args.decoder_dir)
    test = load_test_data(args.identity, path=args.data, progress=True)
    results = []
    for d in dirs:
        if args.attribute:  # three times the renders, not cached
            r = evaluate_model_dir(d, args.identity, test, vae, size=args.size, max_frames=args.frames,
                                   progress=True, attribute=True)
        else:
            r = cached_evaluation(d, args.identity, test, vae, size=args.size, max_frames=args.frames, progress=True)
        r["model_dir"] = str(d)
        results.append(r)
        if not args.json:
            _print_eval(r)
    if args.out:
        from encoder.bench import machine_description

        table = {"models": results, "identity": args.identity, "machine": machine_description(),
                 "command": command_line("encoder", " ".join(
                     ["avcall eval encoder", f"--model-dir {','.join(str(d) for d in dirs)} --identity {args.identity}"]
                     + (["--attribute"] if args.attribute else []) + ([f"--data {args.data}"] if args.data else [])
                     + ([f"--decoder-dir {args.decoder_dir}"] if args.decoder_dir else [])
                     + [f"--frames {args.frames} --size {args.size} --out {args.out}"]))}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(json_safe(table), allow_nan=False, indent=1) + "\n")
        if not args.json:
            print(f"wrote {out}")
    if args.json:
        print(json.dumps(json_safe(results[0] if len(results) == 1 else {"models": results}), allow_nan=False))
    return 0


def _exported_encoders(dirs) -> list:
    """``dirs`` as paths, each checked to hold an exported encoder (one usage line otherwise)."""
    from pathlib import Path

    from avcore.errors import UsageError

    dirs = [Path(d) for d in dirs]
    for d in dirs:
        if not (d / "fusion.onnx").is_file():
            raise UsageError(f"{d} holds no exported encoder (fusion.onnx missing)")
    return dirs


def _print_eval(r: dict) -> None:
    print(f"{r['model_dir']}: {r['frames']} test frames ({r['extreme_frames']} extreme, "
          f"{r.get('asym_extreme_frames', r['extreme_frames'])} asymmetric or extreme)")
    print("  rendered MSE " + ", ".join(f"{v} {x:.2f}" for v, x in r["mse"].items())
          + ("; extreme " + (f"{r['mse_extreme']:.2f}" if r["mse_extreme"] is not None else "n/a"))
          + f"; gaze MAE {r['gaze_mae_deg']:.2f} deg")
    if "mse_face_mean" in r:
        print(f"  face pixels: MSE {r['mse_face_mean']:.2f}, asymmetric/extreme "
              + (f"{r['mse_face_asym_extreme']:.2f}" if r["mse_face_asym_extreme"] is not None else "n/a"))
    for name, a in r.get("attribution", {}).items():
        print(f"  {name.replace('_', ' ')}: rendered MSE mean {a['mse_mean']:.2f}, extreme "
              f"{a['mse_extreme'] if a['mse_extreme'] is None else round(a['mse_extreme'], 2)}, not extreme "
              f"{a['mse_not_extreme'] if a['mse_not_extreme'] is None else round(a['mse_not_extreme'], 2)}")


def _robustness(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avcore.errors import UsageError
    from capture.identity import check_identity
    from decoder.export import load_vae
    from encoder.bench import machine_description
    from encoder.robustness import CONDITIONS, evaluate_robustness, write_results
    from encoder.runtime import default_model_dir
    from encoder.train import ROM_TAG, RUNS_ROOT, load_rom_data

    check_identity(args.identity)
    conditions = [c for c in args.conditions.split(",") if c]
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad or not conditions:
        raise UsageError(f"--conditions: unknown {', '.join(bad) or '(none given)'}; known: {', '.join(CONDITIONS)}")
    dirs = _exported_encoders(args.model_dir or [default_model_dir(args.identity)])
    vae = load_vae(args.identity, args.decoder_dir)
    _, test = load_rom_data(args.identity, workers=args.workers, splits=("test",))
    results = [evaluate_robustness(d, args.identity, vae, test, conditions=conditions, frames=args.frames,
                                   size=args.size, cache_dir=RUNS_ROOT, seconds=args.seconds, test_tag=ROM_TAG)
               for d in dirs]
    command = command_line("robustness", "avcall eval robustness " + f"--identity {args.identity} "
                           + "".join(f"--model-dir {d} " for d in (args.model_dir or []))
                           + (f"--conditions {args.conditions} " if args.conditions != "frequent-fast,asymmetric" else "")
                           + (f"--out-dir {args.out_dir}" if args.out_dir else "")).strip()
    if args.out_dir:
        write_results(results, Path(args.out_dir), machine=machine_description(), command=command)
    if args.json:
        print(json.dumps(json_safe({"results": results, "command": command}), allow_nan=False))
    else:
        for r in results:
            t = r["test"]
            print(f"{r['model_dir']} ({args.identity}): test split face MSE {t['mse_face_mean']:.2f}, "
                  f"whole frame {t['mse_mean']:.2f}")
            for c, x in r["conditions"].items():
                print(f"  {c}: face MSE {x['mse_face_mean']:.2f} ({x['ratio']['mse_face_mean']:.2f}x the test split; "
                      f"hard frames {x['ratio']['mse_face_hard']:.2f}x), whole frame {x['mse_mean']:.2f} "
                      f"({x['ratio']['mse_mean']:.2f}x)")
    return 0


def _ablation(args: argparse.Namespace) -> int:
    from capture.identity import check_identity
    from encoder.ablation import build_table2, render_markdown

    check_identity(args.identity)
    command = command_line("ablation", f"avcall eval ablation --identity {args.identity} --ave {args.ave} "
                                       f"--runs {args.runs} --out {args.out}")
    t = build_table2(args.identity, args.ave, args.runs, args.out, command=command, lut_path=args.lut or None,
                     frames=args.frames, size=args.size, bench_runs=args.bench_runs, test_path=args.data,
                     decoder_dir=args.decoder_dir)
    print(render_markdown(t))
    return 0


def _table(args: argparse.Namespace) -> int:
    from encoder.table import build_table, render_markdown

    from avcore.errors import UsageError

    try:
        seeds = tuple(int(k) for k in args.seeds.split(",") if k.strip()) or None
    except ValueError:
        raise UsageError(f"--seeds: comma-separated integers, got {args.seeds!r}") from None
    command = command_line("table", f"avcall eval table --identities {args.identities} --models {args.models} "
                                    f"--out {args.out}")
    t = build_table(args.identities.split(","), args.models.split(","), args.out, command=command, runs_root=args.runs,
                    max_frames=args.frames, render_size=args.size, bench_runs=args.bench_runs,
                    decoders_root=args.decoders, data_dir=args.data_dir, seeds=seeds, rom=args.rom,
                    lut_path=args.lut or None)
    print(render_markdown(t))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from encoder.bench import bench_arch, bench_model_dir
    from encoder.runtime import default_model_dir

    d = Path(args.model_dir) if args.model_dir else default_model_dir("S1", args.arch)
    if args.model_dir or (d / "fusion.onnx").exists():
        r = bench_model_dir(d, runs=args.runs, warmup=args.warmup, threads=args.threads)
    else:
        r = bench_arch(args.arch, runs=args.runs, warmup=args.warmup, threads=args.threads)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['arch']} ({r['threads']} thread, {r['runs']} runs, p50 ms): "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["encode_ms_p50"].items()))
    return 0
