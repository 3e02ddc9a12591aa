"""Propose the next sampling policy from what a pretraining run measured per source, and save it.

Reads WORK_DIR/config.yaml and WORK_DIR/metrics.jsonl of a run trained with eval.source_holdout_records
(else the per-source training loss stands in), prints per source the current share, the proposed share
and why, and writes the proposal as a policy file (data.sample_policy_file) plus a sidecar
<name>.provenance.yaml recording the run, step, rule and settings. The rule (multiplicative weights on
held-out loss removed per token, with a floor share and a cap on the change per round) is the sampler
viewer's "Training feedback" rule; README: Mixture feedback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llms_trainer.cli import make_parser
from llms_trainer.commands import REPO_ROOT
from llms_trainer.sampler_viewer.feedback import read_run
from llms_trainer.sampler_viewer.plan import PolicyExistsError, policy_path
from llms_trainer.sampler_viewer.proposal import RuleSettings, propose, save_proposal
from llms_trainer.sampler_viewer.sources import ViewerError

DEFAULTS = RuleSettings()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--work-dir", type=Path, required=True, help="the run's work_dir")
    parser.add_argument("--name", help="policy name, may hold sub-folders (default: proposed_<work_dir name>)")
    parser.add_argument("--policy-dir", type=Path,
                        default=Path(os.environ.get("SAMPLER_VIEWER_POLICY_DIR", REPO_ROOT / "configs/sample_policy")),
                        help="the directory the policy goes into (default: SAMPLER_VIEWER_POLICY_DIR or "
                        "configs/sample_policy)")
    parser.add_argument("--cap", type=float, default=DEFAULTS.cap,
                        help="most a source's weight may change per round (factor; the best source gets all of it)")
    parser.add_argument("--floor", type=float, default=DEFAULTS.floor, help="least share any source keeps")
    parser.add_argument("--window", type=int, default=DEFAULTS.window, help="evals in the gain window (the last)")
    parser.add_argument("--margin", type=float, default=0.02,
                        help="forgetting: held-out loss above its first value by this fraction")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing policy file of that name")
    parser.add_argument("--dry-run", action="store_true", help="print the proposal, write nothing")
    return parser.parse_args(argv)


def table(proposal, metric: str) -> list[str]:
    lines = [f"{'source':<16} {'current %':>9} {'proposed %':>10}  why ({metric})"]
    for name, share in proposal.policy.items():
        lines.append(f"{name:<16} {100 * proposal.current[name]:>9.1f} {100 * share:>10.1f}  {proposal.reasons[name]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = RuleSettings(cap=args.cap, floor=args.floor, window=args.window)
    try:
        run = read_run(args.work_dir, window=args.window, margin=args.margin)
        proposal = propose(run, settings)
        print(f"run {run.work_dir} at step {run.step}")
        print("\n".join(table(proposal, run.metric)))
        if args.dry_run:
            return 0
        path = policy_path(args.policy_dir, args.name or f"proposed_{run.work_dir.resolve().name}")
        written = save_proposal(proposal, run, path, policy_root=args.policy_dir, settings=settings,
                                overwrite=args.overwrite)
    except PolicyExistsError as err:
        print(f"error: {err}; pass --overwrite to replace it or --name to choose another", file=sys.stderr)
        return 2
    except ViewerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("wrote " + " and ".join(str(p) for p in written) + f"; train with data.sample_policy_file: {written[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
