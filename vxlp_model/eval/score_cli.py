"""``vxlp score``: print the official score of a benchmark from model logs (rules and formats: docs/scoring.md).

    vxlp score --task vnbench|videomme|mlvu|longvideobench [--rule official|lmms-eval] FILE...
    python -m vxlp_model.eval.score_cli --task videomme videomme_short.json videomme_mid.json videomme_long.json

Prints one line per category, ``name  NN.NN  (correct/total)``, then ``overall NN.NN``; notes go to stderr.
Exit code 0; 2 for bad input (missing or unreadable file, invalid JSON, a file of another format or task),
with a message naming the file and line and no traceback.
"""

from __future__ import annotations

import argparse
import sys

from .scoring import TASKS, VIDEOMME_RULES, ScoreInputError, format_score, load_log, score_logs

__all__ = ["add_score_parser", "run_score", "main"]

_DESCRIPTION = (
    "Score model logs with a benchmark's official rules and print the per-category and overall accuracy. "
    "Reads vxlp JSONL, VNBench result JSONL, lmms-eval per-sample logs (JSON or JSONL), Video-MME's official "
    "results JSON and MLVU per-task summaries; the format is detected from the content."
)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=TASKS, help="benchmark whose official rules to apply")
    p.add_argument(
        "--rule",
        choices=VIDEOMME_RULES,
        default=None,
        help="Video-MME only: 'official' (default; unparsable answers left out of the denominator) or "
        "'lmms-eval' (lmms-eval's extractor; unparsable answers counted wrong)",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="log files, scored together")


def run_score(args: argparse.Namespace) -> int:
    """Run ``vxlp score`` on parsed arguments (``task``, ``rule``, ``files``): print the report, return the
    exit code (0, or 2 after printing ``vxlp score: error: ...`` to stderr for bad input)."""
    try:
        logs = [load_log(path, args.task) for path in args.files]
        score = score_logs(logs, args.task, rule=args.rule)
    except ScoreInputError as e:
        print(f"vxlp score: error: {e}", file=sys.stderr)
        return 2
    print(format_score(score))
    for note in score.notes:
        print(f"vxlp score: note: {note}", file=sys.stderr)
    return 0


def add_score_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``score`` subcommand on an ``argparse`` subparsers object; its ``func`` is :func:`run_score`."""
    p = subparsers.add_parser(
        "score", help="score benchmark logs with the official rules", description=_DESCRIPTION
    )
    _add_arguments(p)
    p.set_defaults(func=run_score)
    return p


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m vxlp_model.eval.score_cli``); returns the exit code.

    Argument errors (e.g. an unknown ``--task``) print argparse's usage message and return 2 instead of raising
    ``SystemExit``; ``--help`` returns 0.
    """
    parser = argparse.ArgumentParser(prog="vxlp score", description=_DESCRIPTION)
    _add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return run_score(args)


if __name__ == "__main__":
    sys.exit(main())
