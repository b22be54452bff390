"""Command line: parse, build a config, call one library function."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

from .auto import auto_config
from .bench import BenchConfig, main_bench
from .checkpoint import CheckpointError
from .compare import compare_runs, format_rows
from .config import (ConfigError, apply_overrides, build_config, dump_yaml, from_dict,
                     list_recipes, recipe_dict, unused_keys, validate)
from .data import DataError
from .data.check import check_dataset, format_report
from .distributed import shutdown
from .rundir import RunDir, check_run_flags
from .engine import NonFiniteLossError
from .evaluate import evaluate_checkpoint, format_eval
from .export import export_model
from .html import write_html
from .pipeline import format_summary, record_store, train, train_teacher
from .predict import format_predictions, predict, write_predictions
from .pretrain import format_summary as format_pretrain, pretrain
from .runtime import resolve_device
from .slurm import SlurmError, submit
from .studies import reanalyze, run_study
from .studies.spec import BUDGETS

EPILOG = ("Any config key can be set as key=value after the options, e.g. "
          "distill.kind=soft aug.mixup=0 optim.base_lr=1e-3. `deitkit recipes` lists recipes.")


def _common(p: argparse.ArgumentParser, recipe: str) -> None:
    p.add_argument("--recipe", help=f"named recipe (default: {recipe})")
    p.set_defaults(default_recipe=recipe)
    p.add_argument("--config", help="YAML file applied on top of the recipe")
    p.add_argument("--data", help="digits, cifar10, cifar100, mnist, fashion-mnist, or an "
                                  "ImageFolder path (train/ plus val/ or test/)")
    p.add_argument("--out", help="run folder (default: runs/<recipe>-<timestamp>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and stop")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def _run_folder_flags(p: argparse.ArgumentParser, budget_help: Optional[str] = None) -> None:
    """--resume, --force, --overwrite (and --time-budget): the run-folder flags of the
    commands that train."""
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from its last checkpoint, exactly")
    p.add_argument("--force", action="store_true",
                   help="with --resume: accept configuration changes")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (refused without it)")
    if budget_help:
        p.add_argument("--time-budget", type=float, metavar="MINUTES", help=budget_help)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deitkit", description=__doc__, epilog=EPILOG)
    parser.add_argument("--debug", action="store_true",
                        help="also print the traceback of an error (anywhere on the line; "
                             "input errors are one line without it)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a distilled DeiT student (quickstart on the digits "
                                     "by default)", epilog=EPILOG)
    _common(p, "quickstart")
    p.add_argument("--teacher", help="teacher: timm/torchvision name, deitkit run folder or "
                                     "checkpoint (default: train a CNN teacher first)")
    p.add_argument("--teacher-weights", help="local weights file for --teacher")
    _run_folder_flags(p, "set the teacher's and student's epochs so that the whole run ends "
                         "within MINUTES on this machine (measured on the first steps)")

    p = sub.add_parser("teacher", help="train a CNN teacher on a dataset", epilog=EPILOG)
    _common(p, "cnn-teacher")
    p.add_argument("--model", help="timm/torchvision CNN name (default: recipe's resnet18)")
    _run_folder_flags(p)

    p = sub.add_parser("pretrain", help="self-supervised pretraining (MAE) of a student's "
                                        "encoder on unlabelled images", epilog=(
        "--data: a folder of images (searched recursively; labels ignored), an ImageFolder "
        "tree (its train/ split) or a built-in dataset. Then: deitkit train --data LABELLED "
        "model.weights=RUN (the command is printed at the end). " + EPILOG))
    _common(p, "mae-cpu")
    _run_folder_flags(p, "set the epochs so that the run ends within MINUTES on this machine "
                         "(measured on a few steps first)")

    p = sub.add_parser("eval", help="evaluate a run folder or checkpoint")
    p.add_argument("run", help="run folder (uses checkpoint-best.pt) or checkpoint file")
    p.add_argument("--data", help="dataset (default: the one it was trained on)")
    p.add_argument("--teacher", help="teacher to compare with (default: the run's teacher)")
    p.add_argument("--teacher-weights")
    p.add_argument("--fusion", choices=("logits", "probs"), help="default: the run's")
    p.add_argument("--last", action="store_true", help="use checkpoint-last.pt")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the metrics to this JSON file")

    p = sub.add_parser("store", help="record a teacher's top-K outputs for every augmented "
                                     "view of a run, so that students train without it",
                       epilog="Then: deitkit train <same recipe, data, seed> --teacher T "
                              "distill.store=OUT. " + EPILOG)
    _common(p, "quickstart")
    p.add_argument("--teacher", help="teacher: timm/torchvision name, deitkit run folder or "
                                     "checkpoint (default: train a CNN teacher into OUT/teacher)")
    p.add_argument("--teacher-weights", help="local weights file for --teacher")
    p.add_argument("--topk", type=int, help="probabilities kept per view (default: all classes, "
                                            "exact)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="storage type of the probabilities (float16 halves the size)")
    p.set_defaults(resume=None, force=False)

    p = sub.add_parser("bench", help="time our training step against a timm reference step "
                                     "(and data loading, evaluation, FLOP/s) in one run")
    for f in dataclasses.fields(BenchConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", help=f"(default: {f.default})")
        else:
            p.add_argument(flag, type=type(f.default), default=f.default,
                           help=f"(default: {f.default})")
    p.add_argument("--json", help="also write the results to this JSON file")

    p = sub.add_parser("study", help="run one of the studies and write its report "
                                     "(aug-strength, aug-ablation, distill-heads, teacher-kind, "
                                     "data-scale)")
    p.add_argument("name", help="study name")
    p.add_argument("--data", help="dataset (the tiny budget defaults to digits)")
    p.add_argument("--budget", default="tiny", choices=tuple(BUDGETS),
                   help="tiny: seconds, CI; quick: CIFAR-10 on 2 CPU cores, target <= 60 min "
                        "per study with --seeds 3 --jobs 2; gpu: one GPU, about 5 min per "
                        "study with --seeds 3; full: one GPU, hours (default: tiny)")
    p.add_argument("--seeds", type=int, default=1, help="runs per setting (default 1)")
    p.add_argument("--root", default="runs/studies",
                   help="folder of study folders and shared teachers (default runs/studies)")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each in its own process on the same device "
                        "(teachers first, then students); the CPU threads are split between "
                        "them (default 1)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="applied to every run of the study, e.g. data.num_workers=12")

    p = sub.add_parser("report", help="a study folder: recompute its tables, plots, findings "
                                      "and report.md from results.json (no training); a run "
                                      "folder: write its HTML page")
    p.add_argument("folder", help="a study folder (ROOT/NAME-BUDGET-DATA) or a run folder")
    p.add_argument("--html", action="store_true",
                   help="also write FOLDER/report.html, one self-contained page (plots "
                        "embedded)")

    p = sub.add_parser("runs", help="tools over several run folders")
    rsub = p.add_subparsers(dest="runs_command", required=True)
    q = rsub.add_parser("compare", help="one table of the key metrics of run folders (or "
                                        "folders holding them, e.g. a study), sorted")
    q.add_argument("dirs", nargs="+", metavar="DIR")
    q.add_argument("--sort", default="fused_top1", help="column to sort by (default fused_top1)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sub.add_parser("recipes", help="list the named recipes")

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("check", help="scan an ImageFolder tree: images per class, bad files, "
                                      "sizes; exit status 1 when it finds problems")
    q.add_argument("path")
    q.add_argument("--min-size", type=int, default=0, help="report images smaller than this")
    q.add_argument("--json", help="also write the report to this JSON file")

    p = sub.add_parser("slurm", help="submit a deitkit command to SLURM (needs submitit)",
                       description="Example: deitkit slurm --nodes 2 --gpus-per-node 8 -- "
                                   "train --recipe deit-paper --out runs/deit-b --data /imagenet")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--partition")
    p.add_argument("--time", type=int, default=24 * 60, help="time limit in minutes")
    p.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node")
    p.add_argument("--logs", default="runs/slurm-logs", help="submitit's log folder")
    p.add_argument("--local", action="store_true",
                   help="run the tasks as local processes (try a submission without SLURM)")
    p.add_argument("--wait", action="store_true", help="wait for the job and report its result")
    p.add_argument("command_args", nargs=argparse.REMAINDER,
                   help="-- then the deitkit command to run, e.g. -- train --out DIR ...")

    p = sub.add_parser("export", help="export a model: OUT.safetensors (+ OUT.json, loadable "
                                      "with timm) or OUT.onnx (fused prediction)")
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("out", help="output path, .safetensors or .onnx")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing output (and, for .safetensors, its .json)")

    p = sub.add_parser("predict", help="top-k classes of images (files and/or folders)")
    p.add_argument("model", help="run folder, checkpoint, or .safetensors export")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--head", default="fused", choices=("fused", "cls", "dist"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the predictions to this JSON file")
    p.add_argument("--csv", help="write the predictions to this CSV file")
    p.add_argument("--no-progress", action="store_true")
    return parser


def _config_from(args):
    overrides = []
    for key, val in (("data.name", args.data), ("out", args.out), ("epochs", args.epochs),
                     ("seed", args.seed), ("device", args.device)):
        if val is not None:
            overrides.append(f"{key}={val}")
    if getattr(args, "teacher", None):
        overrides.append(f"teacher.name={args.teacher}")
    if getattr(args, "teacher_weights", None):
        overrides.append(f"teacher.weights={args.teacher_weights}")
    if getattr(args, "model", None):
        overrides.append(f"model.name={args.model}")
    if args.no_progress:
        overrides.append("progress=false")
    check_run_flags(bool(args.resume), getattr(args, "overwrite", False))
    if args.resume:
        run = RunDir(args.resume)
        if not run.config.is_file():
            raise ConfigError(f"cannot resume '{run}': it holds no {RunDir.CONFIG} (not a "
                              "deitkit run folder, or a run stopped before it began)")
        overrides.append(f"out={run}")
        if not (args.recipe or args.config):  # the stored config, plus what is given here
            cfg = from_dict(run.read_config(), source=f"config file '{run.config}'")
            cfg = apply_overrides(cfg, overrides + args.overrides)
            validate(cfg)
            return cfg
    if (args.command == "train" and not (args.recipe or args.config) and args.data
            and Path(args.data).expanduser().is_dir()):  # your own images: picked from the data
        cfg, why, budget = auto_config(args.data, resolve_device(args.device or "auto").type,
                                       overrides + args.overrides)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: every rank must agree
            budget_line = f"under torchrun: no time budget, {cfg.epochs} epochs"
        else:
            args.time_budget = args.time_budget or budget
            budget_line = (f"time budget {args.time_budget:g} min (--time-budget MINUTES to "
                           "change it)")
        print("no recipe given: picked from the data (give --recipe NAME to choose one):\n  "
              + "\n  ".join(why + [budget_line]))
        return cfg
    return build_config(args.recipe or args.default_recipe, args.config,
                        overrides + args.overrides)


# ---------------------------------------------------------------------------------------------
# the commands: each takes the parsed arguments (and the argv, for the record) and returns the
# exit status

def cmd_recipes(args, argv) -> int:
    for name in list_recipes():
        r = recipe_dict(name).get("recipe", {})
        print(f"{name}\n  {r.get('description', '')}\n  command:  {r.get('command', '')}\n"
              f"  hardware: {r.get('hardware', '')}\n  runtime:  {r.get('runtime', '')}\n"
              f"  expected: {r.get('expected_accuracy', '')}\n")
    return 0


def cmd_eval(args, argv) -> int:
    res = evaluate_checkpoint(args.run, data=args.data, teacher=args.teacher,
                              teacher_weights=args.teacher_weights, fusion=args.fusion,
                              last=args.last, device=args.device)
    print(format_eval(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def cmd_report(args, argv) -> int:
    folder = Path(args.folder)
    if (folder / "results.json").is_file():
        print(f"report in {reanalyze(folder)}")
    if args.html or not (folder / "results.json").is_file():
        print(f"page in {write_html(folder)}")
    return 0


def cmd_runs(args, argv) -> int:
    rows = compare_runs(args.dirs, args.sort)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


def cmd_study(args, argv) -> int:
    run_study(args.name, data=args.data, budget=args.budget, seeds=args.seeds,
              root=args.root, device=args.device, command="deitkit " + " ".join(argv),
              overrides=tuple(args.overrides), jobs=args.jobs)
    return 0


def cmd_bench(args, argv) -> int:
    bcfg = BenchConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)})
    main_bench(bcfg, args.json)
    return 0


def cmd_slurm(args, argv) -> int:
    rest = args.command_args[1:] if args.command_args[:1] == ["--"] else args.command_args
    if not rest:
        raise ConfigError("slurm: give the deitkit command after --")
    job = submit(main, rest, folder=args.logs, nodes=args.nodes,
                 gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                 timeout_min=args.time, partition=args.partition, port=args.port,
                 cluster="local" if args.local else None)
    print(f"submitted job {job.job_id}; logs in {args.logs}")
    return int(job.result() or 0) if args.wait else 0


def cmd_data(args, argv) -> int:
    report = check_dataset(args.path, args.min_size)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["problems"] else 0


def cmd_export(args, argv) -> int:
    print("wrote " + " and ".join(map(str, export_model(args.checkpoint, args.out,
                                                        force=args.force))))
    return 0


def cmd_predict(args, argv) -> int:
    records, skipped = predict(args.model, args.inputs, topk=args.topk, head=args.head,
                               batch_size=args.batch_size, device=args.device,
                               progress=not args.no_progress,
                               log=lambda m: print(m, file=sys.stderr))
    write_predictions(records, skipped, args.json, args.csv)
    if not (args.json or args.csv):
        print(format_predictions(records))
    print(f"{len(records)} images predicted, {len(skipped)} skipped", file=sys.stderr)
    return 0


ROLE_OF = {"train": "student", "store": "student", "teacher": "teacher", "pretrain": "pretrain"}


def _resolved(args):
    """The config of a run command, or None when --dry-run printed it instead. A key given on
    the command line that this run would not read is refused, naming it."""
    cfg = _config_from(args)
    given = [o.split("=", 1)[0].strip() for o in args.overrides if "=" in o]
    unused = unused_keys(cfg, ROLE_OF[args.command], given)
    if unused:
        raise ConfigError("not used by this run, so refused rather than ignored: "
                          + "; ".join(unused))
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return None
    return cfg


def cmd_store(args, argv) -> int:
    if not args.out:
        raise ConfigError("store: give --out (the store folder)")
    cfg = _resolved(args)
    if cfg is not None:
        record_store(cfg, args.out, topk=args.topk, dtype=args.dtype)
    return 0


def cmd_train(args, argv) -> int:
    cfg = _resolved(args)
    if cfg is None:
        return 0
    if args.command == "train":
        summary = train(cfg, resume=bool(args.resume), force=args.force,
                        time_budget=args.time_budget, overwrite=args.overwrite)
    else:
        summary = train_teacher(cfg, resume=bool(args.resume), force=args.force,
                                overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone reports
        print(format_summary(summary))
    return 0


def cmd_pretrain(args, argv) -> int:
    cfg = _resolved(args)
    if cfg is None:
        return 0
    summary = pretrain(cfg, resume=bool(args.resume), force=args.force,
                       overwrite=args.overwrite, time_budget=args.time_budget)
    print(format_pretrain(summary))
    return 0


COMMANDS = {"train": cmd_train, "pretrain": cmd_pretrain, "teacher": cmd_train, "store": cmd_store, "eval": cmd_eval,
            "report": cmd_report, "runs": cmd_runs, "study": cmd_study, "bench": cmd_bench,
            "slurm": cmd_slurm, "data": cmd_data, "export": cmd_export, "predict": cmd_predict,
            "recipes": cmd_recipes}


def main(argv: Optional[list[str]] = None) -> int:
    try:
        return _main(argv)
    finally:
        shutdown()


def _main(argv: Optional[list[str]] = None) -> int:
    parser = make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argv[:argv.index("--")] if "--" in argv else argv  # after `--`: a submitted command's
    debug = "--debug" in own
    if debug:
        argv.remove("--debug")
    if argv[:1] == ["slurm"]:  # everything after `--` belongs to the submitted command
        args = parser.parse_args(argv)
        extra = []
    else:
        # key=value overrides may come anywhere, also after options: collect the strays here
        args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return COMMANDS[args.command](args, argv)
    except (ConfigError, DataError, CheckpointError, NonFiniteLossError, ValueError,
            SlurmError) as e:
        rank = os.environ.get("RANK")
        if debug:
            traceback.print_exc()
        print(f"deitkit: error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deitkit: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
