"""`microvm fanout`: one snapshot run over many inputs (vmm.experiments)."""
from __future__ import annotations

import argparse
import json

from vmm.cli.inputs import read_key
from vmm.cli.status import EXIT_OK, UsageError


def cmd_fanout(args: argparse.Namespace) -> int:
    from vmm.experiments.engines import iter_experiments
    from vmm.experiments.inputs import count_inputs
    from vmm.experiments.output import write_results

    total = count_inputs(args.inputs)  # every line checked before any worker starts
    results = iter_experiments(
        args.snapshot,
        args.inputs,
        engine=args.engine,
        workers=args.workers,
        address=args.address,
        budget=args.budget,
        batch_size=args.batch_size,
        transfer=args.transfer,
        key=read_key(args),
    )
    try:
        out = open(args.output, "w", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror or e}") from None
    with out:
        summary = write_results(results, out, total=total, bar=False if args.quiet else None)
    if args.json:
        print(json.dumps(summary.to_json(), sort_keys=True))
    elif not args.quiet:
        for line in summary.lines():
            print(line)
    return EXIT_OK
