"""The `htgrpo` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from htgrpo.errors import HtgrpoError

DEFAULT_CONFIG = "configs/tiny.yaml"


def _add_config_args(p: argparse.ArgumentParser, config_default: str | None = DEFAULT_CONFIG) -> None:
    p.add_argument("--config", default=config_default, help="YAML run configuration")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set sampler.steps=16 (repeatable)",
    )


def _threads() -> None:
    from htgrpo.cpus import set_torch_threads

    set_torch_threads()


def _checkpoint_config(checkpoint: str, config_path: str | None, overrides: list[str]):
    """The checkpoint's own configuration, then a config file (if given), then --set overrides."""
    from pydantic import ValidationError

    from htgrpo.checkpoint import verify_checkpoint
    from htgrpo.config import Config, ConfigError, apply_overrides, format_errors, load_config

    meta = verify_checkpoint(checkpoint)
    if config_path:
        return load_config(config_path, overrides)
    data: dict[str, Any] = json.loads(json.dumps(meta["config"]))
    apply_overrides(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        source = f"{checkpoint}/config.json" + (f" (with --set {' '.join(overrides)})" if overrides else "")
        raise ConfigError(format_errors(exc, source)) from None


def cmd_pretrain(args: argparse.Namespace) -> int:
    from htgrpo.config import load_config
    from htgrpo.pretrain import pretrain

    _threads()
    cfg = load_config(args.config, args.overrides)
    result = pretrain(cfg, args.out, snapshot_dir=args.snapshots, init=args.init)
    print(
        json.dumps(
            {
                "checkpoint": str(result.checkpoint),
                "steps": result.steps,
                "minutes": round(result.seconds / 60, 2),
                "final_loss": round(result.final_loss, 4),
            }
        )
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from htgrpo.checkpoint import load_checkpoint
    from htgrpo.evaluate import evaluate_shapes, markdown_table, write_report
    from htgrpo.viz import save_grid

    if args.benchmark != "shapes":
        from htgrpo.benchmarks.run import evaluate_command

        _threads()
        return evaluate_command(args)
    if not args.checkpoint:
        raise HtgrpoError("--benchmark shapes needs --checkpoint")
    _threads()
    cfg = _checkpoint_config(args.checkpoint, args.config, args.overrides)
    backbone, _ = load_checkpoint(args.checkpoint, cfg)
    report, images, metas = evaluate_shapes(
        backbone, cfg, split=args.split, images_per_prompt=args.images_per_prompt, seed=args.seed
    )
    report["checkpoint"] = str(args.checkpoint)
    out = write_report(report, args.out, name=Path(args.checkpoint).name)
    if args.grid:
        step = max(1, len(images) // 32)
        save_grid(
            out.with_suffix(".png"),
            images[::step][:32],
            caption=f"{args.checkpoint}: 1 image in {step} of the {report['split']} split",
            labels=[m["prompt"].removeprefix("a photo of ") for m in metas[::step][:32]],
            scale=3,
            cols=8,
        )
    print(markdown_table(report, Path(args.checkpoint).name))
    print(f"report written to {out}")
    from htgrpo.benchmarks.run import track_evaluation

    report.setdefault("name", args.name or Path(args.checkpoint).name)
    files = [out, out.with_suffix(".md"), out.with_suffix(".png")]
    track_evaluation(args, report, files, cfg, out.parent)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from htgrpo.benchmarks.run import report_command

    return report_command(args)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from htgrpo.checkpoint import load_checkpoint
    from htgrpo.sampling import sample
    from htgrpo.viz import save_grid

    _threads()
    cfg = _checkpoint_config(args.checkpoint, args.config, args.overrides)
    backbone, _ = load_checkpoint(args.checkpoint, cfg)
    backbone.encode_prompts([args.prompt])  # a prompt outside the vocabulary fails here, clearly
    gen = torch.Generator().manual_seed(args.seed)
    result = sample(backbone, [args.prompt] * args.n, cfg.sampler, gen)
    images = result.decode(backbone)
    caption = args.prompt
    if args.score:
        from htgrpo.world.detect import ShapeDetector, score_images
        from htgrpo.world.render import metadata_for_prompt

        meta = metadata_for_prompt(args.prompt)
        records = score_images([meta] * args.n, images, ShapeDetector())
        correct = sum(r["correct"] for r in records)
        caption += f"  ({correct}/{args.n} correct)"
    path = save_grid(args.out, images, caption=caption, cols=min(args.n, 8))
    print(f"wrote {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Online RL; under torchrun (WORLD_SIZE > 1) data-parallel over the ranks, rank 0 writing everything."""
    from htgrpo.distributed import init_distributed, shutdown

    ctx = init_distributed()
    try:
        return _train(args, ctx)
    finally:
        shutdown(ctx)


def _train(args: argparse.Namespace, ctx) -> int:
    from htgrpo.config import ConfigError, load_config
    from htgrpo.rl.trainer import GRPOTrainer, init_policy
    from htgrpo.storage import split_uri

    _threads()
    overrides = list(args.overrides)
    if args.method is not None:
        overrides.append(f"rl.method={args.method}")
    if args.steps is not None:
        overrides.append(f"rl.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    # a directory, file://DIR or s3://BUCKET/PREFIX
    out = args.out or f"runs/{cfg.rl.method}-seed{cfg.rl.seed}"
    try:  # before the model is loaded: an unsupported scheme or an S3 key with '..' is refused here
        split_uri(out)
    except ConfigError as exc:
        raise ConfigError(f"--out: {exc}") from None
    init = args.init
    if init is None and cfg.backbone.kind == "tiny":
        init = "checkpoints/base"
    if args.resume:
        trainer = GRPOTrainer.resume(cfg, out, dist=ctx, progress=ctx.is_main)
        if ctx.is_main:
            print(f"resuming {out} at RL step {trainer.step} of {cfg.rl.steps}", file=sys.stderr)
    else:
        trainer = GRPOTrainer(cfg, init_policy(cfg, init), out, dist=ctx, progress=ctx.is_main)
    if not ctx.is_main:  # the other ranks train in step and stay silent
        trainer.train()
        return 0
    run = trainer.run
    tracker = run_id = None
    if cfg.tracking.enabled:
        from htgrpo.tracking import Tracker

        tracker = Tracker(cfg.tracking, run.local)
        run_id = tracker.start_pipeline_run(cfg, run.name, tags={"htgrpo.kind": "train", "run_dir": str(run)})
        trainer.callbacks.append(lambda rec: tracker.log_metrics(run_id, rec, step=rec["step"]))
    history = trainer.train()
    last = run.checkpoints()
    if tracker is not None:
        uri = (str(last[-1]) if run.uri else f"file://{Path(last[-1]).resolve()}") if last else ""
        tracker.set_tags(run_id, {"checkpoint_uri": uri})
        tracker.end_run(run_id)
    done = [h for h in history if "times" in h and "skipped" not in h]
    print(
        json.dumps(
            {
                "run": str(run),
                "method": cfg.rl.method,
                "steps": trainer.step,
                "checkpoint": str(last[-1]) if last else None,
                "reward_first": history[0]["reward_mean"] if history else None,
                "reward_last": history[-1]["reward_mean"] if history else None,
                "skipped_steps": sum("skipped" in h for h in history),
                "seconds_per_step": {
                    k: round(sum(h["times"][k] for h in done) / len(done), 3)
                    for k in ("rollout", "reward", "old_ref", "update")
                }
                if done
                else None,
                "forward_passes_per_sample": done[-1]["forward_passes_per_sample"] if done else None,
            }
        )
    )
    return 0


def cmd_weights_download(args: argparse.Namespace) -> int:
    from htgrpo.backbones.hub import download_weights
    from htgrpo.config import StorageConfig

    storage = None
    if str(args.to).startswith("s3://"):
        storage = StorageConfig(uri=args.to, endpoint_url=args.storage_endpoint)
    result = download_weights(args.model, args.to, revision=args.revision, storage=storage)
    print(json.dumps(result))
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    from htgrpo.config import load_config
    from htgrpo.world.dataset import splits_for
    from htgrpo.world.grammar import write_jsonl

    cfg = load_config(args.config, args.overrides)
    rows = splits_for(cfg.world).get(args.split)
    path = write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} GenEval metadata rows of the {args.split} split to {path}")
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from htgrpo import prompts

    if args.list:
        print("\n".join(prompts.list_sources()))
        return 0
    if not args.source or not args.out:
        raise HtgrpoError("htgrpo prompts needs --source NAME and --out FILE (or --list)")
    world = None
    if prompts.parse_source(args.source).base == "shapes":
        from htgrpo.config import load_config

        world = load_config(args.config, args.overrides).world
    rows = prompts.load_source(
        args.source, n=args.n, mix=args.mix, seed=args.seed, unseen=args.unseen_objects, world=world
    )
    path = prompts.write_jsonl(rows, args.out)
    counts = ", ".join(f"{k} {v}" for k, v in prompts.tag_counts(rows).items())
    print(f"wrote {len(rows)} prompts of {args.source} to {path} ({counts})")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from htgrpo.config import config_to_dict, load_config

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return 0


def cmd_pipeline_compile(args: argparse.Namespace) -> int:
    from htgrpo.config import load_config
    from htgrpo.pipeline.local import load_pipeline_module

    cfg = load_config(args.config, args.overrides)
    module = load_pipeline_module(args.pipeline_py)
    out = module.compile_pipeline(args.out, rounds=args.rounds, settings=cfg.pipeline)
    print(f"compiled {args.rounds} round(s) to {out}")
    return 0


def cmd_pipeline_run_local(args: argparse.Namespace) -> int:
    from htgrpo.pipeline.local import format_summary, run_local

    _threads()
    summary = run_local(
        args.pipeline,
        config=args.config,
        init_checkpoint=args.init,
        out=args.out,
        overrides=args.overrides,
        shards=args.shards,
        run_name=args.run_name,
        storage_uri=args.storage_uri,
        tracking_uri=args.tracking_uri,
    )
    print(format_summary(summary))
    return 0


def cmd_pipeline_submit(args: argparse.Namespace) -> int:
    from htgrpo.submit import GpuPool, plan_submission, submit, token_path

    plan = plan_submission(
        args.package,
        experiment=args.experiment,
        params=args.params,
        run_name=args.run_name,
        run_name_prefix=args.run_name_prefix,
        host=args.host,
        namespace=args.namespace,
        service_account=args.service_account,
        gpu_pool=GpuPool.from_json(args.gpu_pool) if args.gpu_pool else None,
        s3_endpoint=args.s3_endpoint,
    )
    if args.write_package:
        Path(args.write_package).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write_package).write_text(plan.package_text())
    if args.dry_run:
        token = Path(args.token_path) if args.token_path else token_path()
        out = {"dry_run": True, **plan.to_dict(), "token_path": str(token), "token_present": token.is_file()}
        print(json.dumps(out, indent=2))
        return 0
    print(json.dumps(submit(plan, token_file=args.token_path), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htgrpo", description="HT-GRPO for discrete-diffusion T2I models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train the image tokenizer and the base backbone on the shapes world")
    _add_config_args(p)
    p.add_argument("--out", default="checkpoints/base", help="checkpoint directory to write")
    p.add_argument(
        "--snapshots", default=None, help="directory for timed snapshots (score-versus-time curve)"
    )
    p.add_argument("--init", default=None, help="continue from this checkpoint (its tokenizer and weights)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("evaluate", help="score a checkpoint on a benchmark")
    p.add_argument("--benchmark", default="shapes", help="shapes, geneval, dpg or metrics")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (required except with --images)")
    p.add_argument(
        "--out",
        required=True,
        help="shapes: report JSON path (a .md table is written beside it); other benchmarks: output directory",
    )
    p.add_argument("--split", default=None, choices=["train", "val", "test", "unseen"], help="prompt split")
    p.add_argument("--images-per-prompt", type=int, default=None, help="images per prompt (default 4)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--grid", action="store_true", help="also write a PNG grid of samples beside the report")
    _add_config_args(p, config_default=None)
    from htgrpo.benchmarks.run import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "report", help="set two or more evaluations side by side (Markdown table and bar chart)"
    )
    p.add_argument(
        "evaluations", nargs="+", help="evaluation directories (summary.json) or shapes report JSONs"
    )
    p.add_argument("--out", required=True, help="directory for report.md and report.png")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sample", help="sample images for one prompt into a PNG grid")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--prompt", required=True, help='e.g. "a photo of a red circle"')
    p.add_argument("--n", type=int, default=8, help="number of images")
    p.add_argument("--out", default="grid.png", help="PNG path")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--score", action="store_true", help="score the images with the shape detector")
    _add_config_args(p, config_default=None)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train", help="online RL (HT-GRPO or a baseline) from a base checkpoint")
    p.add_argument(
        "--method",
        default=None,
        help="ht-grpo, maskgrpo, unigrpo, d1, tracegrpo or coupled (sets rl.method; default: the config's)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="checkpoint to start from (and the reference); default checkpoints/base for backbone.kind=tiny, "
        "the pretrained backbone.weights for mmada/dimoo",
    )
    p.add_argument(
        "--out",
        default=None,
        help="run directory, file://DIR or s3://BUCKET/PREFIX (endpoint etc. from storage.*); "
        "default runs/METHOD-seedSEED",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--steps", type=int, default=None, help="RL steps (sets rl.steps)")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("weights", help="pretrained weights of the real backbones")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    q = wsub.add_parser(
        "download",
        help="download MMaDA-8B or Lumina-DiMOO (and the image tokenizer) from the Hugging Face Hub",
    )
    q.add_argument(
        "--model", required=True, choices=["mmada", "mmada-mixcot", "dimoo"], help="which backbone"
    )
    q.add_argument("--to", required=True, help="local directory, file://DIR or s3://BUCKET/PREFIX")
    q.add_argument("--revision", default=None, help="a branch, tag or commit of the model repository")
    q.add_argument(
        "--storage-endpoint", default=None, help="S3 endpoint for an s3:// destination (default: AWS / env)"
    )
    q.set_defaults(func=cmd_weights_download)

    p = sub.add_parser("world", help="write a split's GenEval metadata as JSONL")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "unseen"])
    p.add_argument("--out", required=True, help="JSONL path")
    _add_config_args(p)
    p.set_defaults(func=cmd_world)

    p = sub.add_parser(
        "prompts",
        help="write a prompt source as GenEval metadata JSONL (GenEval-style training prompts, T2I-CompBench, ...)",
    )
    p.add_argument(
        "--source",
        default=None,
        help="geneval-train, geneval-unseen, geneval, geneval-unseen-test, t2i-compbench[:CAT[:SPLIT]], drawbench, "
        "pickscore-sfw[:SPLIT], imagereward, dpg or a shapes split (--list prints them all)",
    )
    p.add_argument("--out", default=None, help="JSONL path to write")
    p.add_argument(
        "--n", type=int, default=None, help="geneval-train/-unseen: number of prompts (default 50000)"
    )
    p.add_argument(
        "--mix",
        default=None,
        help="geneval-train/-unseen: task weights, e.g. single_object=1,two_object=1,position=2 "
        "(default: Flow-GRPO's; 'uniform' for equal weights)",
    )
    p.add_argument("--seed", type=int, default=None, help="geneval-train/-unseen: sampling seed (default 0)")
    p.add_argument(
        "--unseen-objects",
        default=None,
        help="geneval-train/-unseen: held-out classes: flow-grpo (default, its 20), none, a comma list, "
        "or random:K[:SEED]",
    )
    p.add_argument("--list", action="store_true", help="print the source names and exit")
    _add_config_args(p)
    p.set_defaults(func=cmd_prompts)

    p = sub.add_parser(
        "pipeline",
        help="the Kubeflow pipeline: compile it, run it here with KFP's local runner, or submit it",
    )
    psub = p.add_subparsers(dest="pipeline_command", required=True)
    q = psub.add_parser("compile", help="compile pipelines/htgrpo.py to KFP IR YAML")
    q.add_argument("--rounds", type=int, default=2, help="RL rounds, fixed at compile time")
    q.add_argument("--out", default="pipelines/htgrpo.yaml", help="YAML to write")
    q.add_argument("--pipeline-py", default="pipelines/htgrpo.py", help="the pipeline definition")
    _add_config_args(q)
    q.set_defaults(func=cmd_pipeline_compile)
    q = psub.add_parser(
        "run-local", help="run the compiled pipeline with KFP's SubprocessRunner (CPU, local)"
    )
    q.add_argument("--pipeline", default="pipelines/htgrpo.yaml", help="compiled pipeline YAML")
    q.add_argument("--init", default="checkpoints/base", help="initial checkpoint (path, file:// or s3://)")
    q.add_argument("--out", default="out/pipeline", help="local output: store, MLflow db, KFP outputs")
    q.add_argument("--shards", type=int, default=None, help="rollout shards (default: the pipeline's)")
    q.add_argument("--run-name", default=None, help="run name (default local-TIMESTAMP)")
    q.add_argument("--storage-uri", default=None, help="store (default file://OUT/store)")
    q.add_argument("--tracking-uri", default=None, help="MLflow (default sqlite:///OUT/mlflow.db)")
    _add_config_args(q)
    q.set_defaults(func=cmd_pipeline_run_local)
    q = psub.add_parser(
        "submit",
        help="check the compiled pipeline and its parameters, then create one run on a KFP server "
        "(what the Helm chart's CronJob runs)",
    )
    q.add_argument(
        "--package", default="pipelines/htgrpo.yaml", help="compiled pipeline YAML: a path or s3://BUCKET/KEY"
    )
    q.add_argument("--experiment", required=True, help="KFP experiment (created if missing)")
    q.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline parameter, converted to its declared type; lists as JSON, e.g. "
        "overrides='[\"rl.lr=1e-5\"]' (repeatable)",
    )
    q.add_argument("--run-name", default=None, help="run name (default PREFIX-YYYYmmdd-HHMMSS, UTC)")
    q.add_argument(
        "--run-name-prefix", default=None, help="prefix of the default run name (default: experiment)"
    )
    q.add_argument(
        "--host", default=None, help="KFP API endpoint (default: the in-cluster ml-pipeline service)"
    )
    q.add_argument("--namespace", default=None, help="KFP namespace (multi-user: the profile namespace)")
    q.add_argument("--service-account", default=None, help="service account the run's pods use")
    q.add_argument(
        "--token-path",
        default=None,
        help="projected service-account token (default $KF_PIPELINES_SA_TOKEN_PATH or "
        "/var/run/secrets/kubeflow/pipelines/token; absent: no token is sent)",
    )
    q.add_argument(
        "--gpu-pool",
        default=None,
        metavar="JSON",
        help='move the GPU steps to this pool: {"resourceName", "count", "nodeSelector", "tolerations"}',
    )
    q.add_argument(
        "--s3-endpoint", default=None, help="S3 endpoint for an s3:// package (default AWS_ENDPOINT_URL)"
    )
    q.add_argument("--write-package", default=None, help="also write the package as it would be submitted")
    q.add_argument("--dry-run", action="store_true", help="check and print the run; contact no server")
    q.set_defaults(func=cmd_pipeline_submit)

    p = sub.add_parser("config", help="print the resolved configuration")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "n", 1) is not None and getattr(args, "n", 1) < 1:
        print("error: --n must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except HtgrpoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
