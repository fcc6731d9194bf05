"""The `latentrt` command line: export, build, generate, check, bench, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latentrt.errors import InputError, LatentRTError
from latentrt.progress import Progress


def cmd_export(args: argparse.Namespace) -> int:
    from latentrt.export.bundle import export_bundle, is_current

    if args.skip_unchanged and is_current(args.src, args.out, args.precision):
        print(f"{args.out} is up to date with {args.src}")
        return 0
    bar = Progress("export")
    export_bundle(
        args.src,
        args.out,
        precision=args.precision,
        prediction_type=args.prediction_type,
        progress=bar.message,
    )
    bar.close()
    print(f"wrote {args.out}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from latentrt.runtime.build import build_engines

    bar = Progress(f"build {args.target}")
    path = build_engines(args.bundle, args.target, progress=bar.message)
    bar.close()
    print(f"engines for {args.target} in {path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from latentrt.runtime.pipeline import Pipeline

    pipe = Pipeline.load(args.bundle, backend=args.backend)
    image = Image.open(args.image) if args.image else None
    mask = Image.open(args.mask) if args.mask else None
    bar = Progress("sampling", total=None)
    images = pipe.generate(
        args.prompt,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
        scheduler=args.scheduler,
        seed=args.seed,
        batch=args.batch,
        image=image,
        mask=mask,
        strength=args.strength,
        callback=lambda info: bar.step(),
    )
    bar.close()
    out = Path(args.output)
    for i, im in enumerate(images):
        path = out if len(images) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        pipe.save(im, path)
        print(path)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from latentrt.export.check import check_bundle

    report = check_bundle(args.bundle, source=args.source, backend=args.backend)
    print(json.dumps(report, indent=2) if args.json else report_table(report))
    return 0 if all(r["ok"] for r in report["components"].values()) else 1


def report_table(report: dict) -> str:
    lines = [f"{'component':<16} {'max abs err':>12} {'tolerance':>10}  result"]
    for name, r in report["components"].items():
        lines.append(
            f"{name:<16} {r['max_abs_err']:>12.3g} {r['tolerance']:>10.1g}  "
            + ("ok" if r["ok"] else "FAIL")
        )
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from latentrt.demo import run_demo

    path = run_demo(args.output, prompt=args.prompt, seed=args.seed)
    print(path)
    return 0


def _backend_options(
    pairs: list[str],
    flags: list[str],
    arena_max_dead_mib: float | None = None,
    cublas_workspace: str | None = None,
) -> dict:
    """`--option KEY=VALUE` pairs (ORT CUDA provider options), the session flags
    (`--shared-arena`, `--mem-pattern`, `--shrink-arena`), `--arena-max-dead-mib` and
    `--cublas-workspace` ("none": cuBLAS's own default)."""
    options: dict = {flag: True for flag in flags}
    if arena_max_dead_mib is not None:
        options["arena_max_dead_mib"] = arena_max_dead_mib
    if cublas_workspace is not None:
        options["cublas_workspace"] = None if cublas_workspace == "none" else cublas_workspace
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--option takes KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def cmd_bench(args: argparse.Namespace) -> int:
    from latentrt.runtime.bench import bench, format_table

    result = bench(
        args.bundle,
        backend=args.backend,
        width=args.width,
        height=args.height,
        batch=args.batch,
        steps=args.steps,
        repeats=args.repeats,
        options=_backend_options(
            args.option, args.session_flag or [], args.arena_max_dead_mib, args.cublas_workspace
        ),
    )
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentrt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="export a checkpoint to a bundle (needs torch)")
    e.add_argument("src", help="diffusers folder or single-file .safetensors checkpoint")
    e.add_argument("out", help="bundle directory to write")
    e.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    e.add_argument("--prediction-type", choices=["epsilon", "v_prediction", "sample"])
    e.add_argument("--skip-unchanged", action="store_true", help="do nothing if up to date")
    e.set_defaults(func=cmd_export)

    b = sub.add_parser("build", help="build engines for a target")
    b.add_argument("bundle")
    b.add_argument("--target", choices=["ort-cpu", "ort-cuda", "tensorrt"], default="ort-cpu")
    b.set_defaults(func=cmd_build)

    g = sub.add_parser("generate", help="generate images from a bundle")
    g.add_argument("bundle")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("-o", "--output", default="out.png")
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--guidance", type=float, default=7.5)
    g.add_argument("--sampler", default="euler")
    g.add_argument("--scheduler")
    g.add_argument("--seed", type=int)
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--image", help="init image for img2img / inpainting")
    g.add_argument("--mask", help="inpainting mask (white = repaint)")
    g.add_argument("--strength", type=float)
    g.add_argument("--backend", default="ort-cpu")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check", help="parity of a bundle against the PyTorch reference")
    c.add_argument("bundle")
    c.add_argument("--source", help="checkpoint the bundle was exported from")
    c.add_argument("--backend", default="ort-cpu")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)

    n = sub.add_parser("bench", help="per-component, per-step and end-to-end timings, memory")
    n.add_argument("bundle")
    n.add_argument("--backend", choices=["ort-cuda", "ort-cpu"], default="ort-cuda")
    n.add_argument("--width", type=int)
    n.add_argument("--height", type=int)
    n.add_argument("--batch", type=int, default=1)
    n.add_argument("--steps", type=int, default=30)
    n.add_argument("--repeats", type=int, default=20)
    n.add_argument("--json", help="also write the result as JSON to this file")
    n.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ort-cuda provider option overriding the default, e.g. prefer_nhwc=0 (repeatable)",
    )
    for flag, what in (
        ("shared_arena", "one arena for the sessions without a CUDA graph"),
        ("mem_pattern", "a pre-planned activation block per shape"),
        ("shrink_arena", "hand unused arena memory back after each run"),
    ):
        n.add_argument(
            "--" + flag.replace("_", "-"),
            dest="session_flag",
            action="append_const",
            const=flag,
            help=f"ort-cuda: {what}",
        )
    n.add_argument(
        "--arena-max-dead-mib",
        type=float,
        metavar="MIB",
        help="ort-cuda, with --shared-arena: split a free chunk that exceeds a request by more",
    )
    n.add_argument(
        "--cublas-workspace",
        metavar="SPEC",
        help="ort-cuda: CUBLAS_WORKSPACE_CONFIG unless set (default :4096:2; none: cuBLAS's)",
    )
    n.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="generate with the embedded default model")
    d.add_argument("-o", "--output", default="out/demo.png")
    d.add_argument("--prompt", default="a red circle on a blue background")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LatentRTError as e:
        print(f"latentrt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
