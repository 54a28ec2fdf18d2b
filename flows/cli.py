"""`exsearch`: run, schedule, compare and browse EM campaigns (also `python -m flows`).

exsearch run                          # every stage DVC finds out of date, in order
exsearch run -S train.epochs=2 --name ep2    # a named DVC experiment
exsearch serve --cron "0 3 * * *" --extend   # a scheduled deployment, +1 iteration per run
exsearch deploy --pool cpu                   # a deployment that `prefect worker`s run
exsearch compare                      # campaigns × iterations from MLflow → reports/compare.*
exsearch export --format flashrag --predictions runs/iter_2/predictions.jsonl --out F.jsonl
exsearch study queue                  # queue the study's grid of DVC experiments
exsearch study table                  # their F1 per iteration with intervals (markdown)
exsearch ui                           # the MLflow UI on http://127.0.0.1:5000
exsearch repro                        # plain `dvc repro` under one MLflow parent run
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows import runs_view
from flows.dag import project_root


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-C", "--project-dir", default=".", help="DVC project directory (default: current)"
    )


def _override(text: str) -> str:
    key, eq, _ = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. train.epochs=2")
    return text


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_override,
        help="override a params.yaml value (dotted key, repeatable); makes a DVC experiment",
    )


FORMAT = argparse.RawDescriptionHelpFormatter


def _subcommand(
    sub: argparse._SubParsersAction, name: str, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand's parser, with the option every subcommand takes (-C)."""
    p = sub.add_parser(name, formatter_class=FORMAT, help=help, description=description)
    _add_common(p)
    return p


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = _subcommand(
        sub,
        "run",
        "run the campaign once (Prefect flow over DVC stages)",
        "Run the campaign's DVC stages in DAG order, one Prefect task each\n"
        "(`dvc repro --single-item`), under one MLflow parent run. DVC skips up-to-date\n"
        "stages, so a rerun after a failure resumes at the failed stage. With -S or --name\n"
        "the whole run is one `dvc exp run` and becomes a named DVC experiment.",
    )
    run.add_argument(
        "--iterations",
        nargs="+",
        metavar="ITER",
        help="only these checkpoints (iter_1 … or base) and the stages they depend on",
    )
    _add_overrides(run)
    run.add_argument("--name", help="DVC experiment name (implies `dvc exp run`)")
    run.add_argument("--dry-run", action="store_true", help="list the stages that would run")
    run.add_argument("--rerun", action="store_true", help="force stages DVC finds up to date")
    run.add_argument("--extend", action="store_true", help="first add the next EM iteration")


def _add_deployment_options(p: argparse.ArgumentParser, schedule_required: bool) -> None:
    """What `serve` and `deploy` share: the schedule, --extend, the name, the overrides."""
    when = p.add_mutually_exclusive_group(required=schedule_required)
    when.add_argument("--cron", help='cron schedule, e.g. "0 3 * * *" (03:00 daily)')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every N seconds")
    p.add_argument("--extend", action="store_true", help="each run adds one EM iteration")
    p.add_argument("--deployment", default="em-campaign", help="deployment name")
    _add_overrides(p)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    serve = _subcommand(
        sub,
        "serve",
        "serve a scheduled deployment of the campaign",
        "Create a Prefect deployment with a schedule and serve it (blocks until\n"
        "Ctrl-C, which pauses the schedule). Each scheduled run reruns the campaign, or with\n"
        "--extend first adds the next EM iteration to params.yaml. Needs a Prefect server:\n"
        "  prefect server start --host 127.0.0.1 &\n"
        "  export PREFECT_API_URL=http://127.0.0.1:4200/api",
    )
    _add_deployment_options(serve, schedule_required=True)


def _add_deploy(sub: argparse._SubParsersAction) -> None:
    deploy = _subcommand(
        sub,
        "deploy",
        "register a deployment that Prefect workers run (work pool)",
        "Register the campaign as a deployment on a Prefect work pool of type 'process'\n"
        "(created if missing) and return. A worker started with\n"
        "  prefect worker start --pool POOL\n"
        "on any machine that reaches the Prefect server and sees this project at the same\n"
        "path runs each flow run. Without --cron/--interval it runs when asked:\n"
        "  prefect deployment run em-campaign/DEPLOYMENT\n"
        "Needs a Prefect server (PREFECT_API_URL), as serve does.",
    )
    deploy.add_argument("--pool", required=True, help="work pool name (type process)")
    _add_deployment_options(deploy, schedule_required=False)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    compare = _subcommand(
        sub,
        "compare",
        "table of campaigns × iterations from MLflow",
        "Read every evaluate run of the MLflow experiment and print one row per\n"
        "campaign and iteration: F1, EM, support recall, searches per question and the\n"
        "paired interval of F1 against iter_0 (--wide: every column). Every column is also\n"
        "written to <out-dir>/compare.csv and compare.md.",
    )
    compare.add_argument("--experiment", help="MLflow experiment (default: params.yaml)")
    compare.add_argument("--metrics", default="overall/", help="metric name prefix to show")
    compare.add_argument("--out-dir", default="reports", help="where to write (default reports)")
    compare.add_argument(
        "--wide",
        action="store_true",
        help="print every column (metrics, all paired intervals, commit, status); the files "
        "always hold them all",
    )


def _add_export(sub: argparse._SubParsersAction) -> None:
    export = _subcommand(
        sub,
        "export",
        "write one method's predictions in another toolkit's schema (FlashRAG)",
        "Write the records of one method of an evaluate stage's predictions file in\n"
        "FlashRAG's dataset schema (id, question, golden_answers, output: pred,\n"
        "retrieval_result, prompt; metadata), to score with FlashRAG's evaluator or set beside\n"
        "its baselines. OUT ending .jsonl is what FlashRAG's Dataset loads; .json is one list,\n"
        "as its Dataset.save writes. Without --corpus each retrieved passage is its id only.",
    )
    export.add_argument("--format", required=True, choices=["flashrag"], help="target schema")
    export.add_argument(
        "--predictions",
        required=True,
        help="an evaluate stage's records, e.g. runs/iter_2/predictions.jsonl",
    )
    export.add_argument("--method", default="agent", help="which method's records (default agent)")
    export.add_argument(
        "--corpus", help="passages for the retrieved texts, e.g. data/prepared/corpus.jsonl"
    )
    export.add_argument("--out", required=True, help="file to write (.jsonl or .json)")


def _add_ui(sub: argparse._SubParsersAction) -> None:
    ui = _subcommand(
        sub,
        "ui",
        "start the MLflow UI on 127.0.0.1",
        "Start `mlflow ui` on this project's tracking store (MLFLOW_TRACKING_URI,\n"
        "default sqlite:///mlflow.db), listening on 127.0.0.1 only, and print a link to\n"
        "the experiment's runs table opened on the checkpoints: the evaluate runs with\n"
        "F1, EM, support recall and searches per question as columns (flows/runs_view.py).",
    )
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")


def _add_study(sub: argparse._SubParsersAction) -> None:
    study = _subcommand(
        sub,
        "study",
        "queue the study's grid of DVC experiments, or tabulate the finished ones",
        "`queue`: one `dvc exp run --queue` per setting of flows/study.py (run\n"
        "them with `dvc queue start -j 1`); `table`: each finished setting's agent F1 per\n"
        "iteration and its last iteration's gain over iter_0 and over RAG, with 95% intervals;\n"
        "`diff`: paired differences of one setting's checkpoint against another's (or the\n"
        "committed campaign's), per method, on the questions both scored. Example:\n"
        "  exsearch study diff --settings t1.0 --against HEAD --checkpoint iter_2",
    )
    study.add_argument("action", choices=["queue", "table", "diff"])
    study.add_argument("--settings", nargs="+", metavar="NAME", help="only these settings")
    study.add_argument(
        "--against",
        default="HEAD",
        metavar="NAME",
        help="diff: the setting compared with, or a git revision whose dvc.lock names the "
        "predictions (default HEAD: the committed campaign)",
    )
    study.add_argument(
        "--checkpoint", default="iter_2", help="diff: the checkpoint compared (default iter_2)"
    )


def _add_repro(sub: argparse._SubParsersAction) -> None:
    repro = _subcommand(
        sub,
        "repro",
        "plain `dvc repro` under one MLflow parent run",
        "Run `dvc repro [ARGS]` as is (no Prefect), with the stages' MLflow runs\n"
        "nested under one new parent run. Example: exsearch repro -- train@iter_1 --force",
    )
    repro.add_argument("dvc_args", nargs=argparse.REMAINDER, help="arguments for dvc repro")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subcommand per action, each with its own --help."""
    parser = argparse.ArgumentParser(prog="exsearch", description=__doc__, formatter_class=FORMAT)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adders = (
        _add_run,
        _add_serve,
        _add_deploy,
        _add_compare,
        _add_export,
        _add_ui,
        _add_study,
        _add_repro,
    )
    for add in adders:
        add(sub)
    return parser


def _cmd_run(args: argparse.Namespace, root: Path) -> int:
    from flows.campaign import em_campaign

    em_campaign(
        iterations=args.iterations,
        overrides=args.overrides,
        dry_run=args.dry_run,
        exp_name=args.name,
        rerun=args.rerun,
        extend=args.extend,
        project_dir=str(root),
    )
    return 0


def _cmd_serve(args: argparse.Namespace, root: Path) -> int:
    from flows.deployments import serve

    serve(args.deployment, args.cron, args.interval, args.extend, args.overrides, str(root))
    return 0


def _cmd_deploy(args: argparse.Namespace, root: Path) -> int:
    from flows.deployments import deploy

    deployment_id = deploy(
        args.pool,
        args.deployment,
        args.cron,
        args.interval,
        args.extend,
        args.overrides,
        str(root),
    )
    print(
        f"deployment em-campaign/{args.deployment} ({deployment_id}) on work pool {args.pool}\n"
        f"start a worker:  prefect worker start --pool {args.pool}\n"
        f"run it now:      prefect deployment run em-campaign/{args.deployment}"
    )
    return 0


def _cmd_compare(args: argparse.Namespace, root: Path) -> int:
    import csv

    from exsearch.config import load_params
    from exsearch.evaluation import markdown_table
    from exsearch.files import atomic_path, write_text
    from flows.compare import compare_rows, narrow_rows

    experiment = args.experiment or load_params().tracking.experiment
    rows = compare_rows(experiment, args.metrics)
    if not rows:
        print(f"no evaluate runs yet in MLflow experiment {experiment!r}")
        return 0
    table = markdown_table(rows)
    print(table if args.wide else markdown_table(narrow_rows(rows), floats=".3g"), end="")
    out = Path(args.out_dir)
    with atomic_path(out / "compare.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    write_text(out / "compare.md", f"# Campaigns in MLflow experiment {experiment}\n\n{table}")
    print(f"wrote {out / 'compare.csv'} and {out / 'compare.md'}")
    return 0


def _cmd_export(args: argparse.Namespace, root: Path) -> int:
    from exsearch.evaluation import export_flashrag

    n = export_flashrag(args.predictions, args.out, method=args.method, corpus=args.corpus)
    print(f"wrote {n} {args.method} item(s) in FlashRAG's schema to {args.out}")
    return 0


def ui_command(uri: str, port: int) -> list[str]:
    """The `mlflow ui` command line for `uri`, bound to 127.0.0.1."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _runs_view(uri: str, port: int) -> str:
    """The UI address to open: the experiment's checkpoint view (flows.runs_view), saved first.

    The experiment list when params.yaml's experiment is not in the store yet (or the store or
    params cannot be read): there is nothing to show a view of.
    """
    base = f"http://127.0.0.1:{port}"
    try:
        import mlflow

        from exsearch.config import load_params

        client = mlflow.MlflowClient(uri)
        found = client.get_experiment_by_name(load_params().tracking.experiment)
        if found is None:
            return base
        return runs_view.view_url(
            base, found.experiment_id, runs_view.save_view(client, found.experiment_id)
        )
    except Exception as e:  # no params, no store yet: the experiment list is the right page
        print(f"note: no saved view ({type(e).__name__}: {e}); opening the experiment list")
        return base


def _cmd_ui(args: argparse.Namespace, root: Path) -> int:
    import subprocess

    from tracking import tracking_uri

    uri = tracking_uri()
    cmd = ui_command(uri, args.port)
    print(f"MLflow UI: {_runs_view(uri, args.port)} (Ctrl-C stops it)")
    return subprocess.call(cmd)


def _cmd_repro(args: argparse.Namespace, root: Path) -> int:
    import tracking
    from exsearch.config import load_params
    from flows.campaign import StageFailed, stream, subprocess_env

    dvc_args = [a for a in args.dvc_args if a != "--"]
    parent = tracking.start_campaign_run(load_params(), "repro " + " ".join(dvc_args))
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri()}
    if parent:
        env[tracking.PARENT_ENV] = parent
    cmd = [sys.executable, "-m", "dvc", "repro", *dvc_args]
    status = "FAILED"
    try:
        stream(cmd, root, subprocess_env(env), print)
        status = "FINISHED"
    except StageFailed:
        return 1
    finally:
        tracking.record_lock_hashes(parent)
        tracking.end_campaign_run(parent, status)
    return 0


def _cmd_study(args: argparse.Namespace, root: Path) -> int:
    from flows import study

    if args.action == "queue":
        study.queue(args.settings, root)
        print("queued; run them with `dvc queue start -j 1`, follow with `dvc queue status`")
        return 0
    if args.action == "diff":
        if not args.settings:
            print("error: study diff needs --settings NAME [NAME ...]", file=sys.stderr)
            return 2
        for name in args.settings:
            print(study.diff_table(root, name, args.against, args.checkpoint), end="")
        return 0
    rows = [r for r in study.experiments(root) if not args.settings or r["name"] in args.settings]
    if not rows:
        print("no finished study experiment yet")
        return 0
    tables = (study.study_table(rows), study.evidence_table(rows), study.hops_table(rows))
    print("\n".join(tables), end="")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "serve": _cmd_serve,
    "deploy": _cmd_deploy,
    "compare": _cmd_compare,
    "export": _cmd_export,
    "ui": _cmd_ui,
    "repro": _cmd_repro,
    "study": _cmd_study,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `exsearch` console script."""
    args = build_parser().parse_args(argv)
    try:
        root = project_root(args.project_dir)
        os.chdir(root)
        return COMMANDS[args.command](args, root)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a human-readable line, not a traceback, for expected failures
        if os.environ.get("EXSEARCH_DEBUG"):
            raise
        print(f"exsearch {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
