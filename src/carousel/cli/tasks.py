"""``carousel tasks``: list the registered tasks with their sources and success criteria."""

from __future__ import annotations

import argparse
import json
import textwrap

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tasks",
        help="list the tasks `carousel train` knows",
        description="List the registered tasks: what each asks, its source, its success "
        "criterion and its options (the [data] table of a config).",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from carousel.tasks import all_tasks

    specs = all_tasks()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": s.name,
                        "summary": s.summary,
                        "source": s.source,
                        "success": s.success,
                        "options": {
                            f.name: f.default
                            for f in dataclasses.fields(s.cls.Config)
                            if f.default is not dataclasses.MISSING
                        },
                    }
                    for s in specs
                ],
                indent=1,
                default=str,
            )
        )
        return 0
    for s in specs:
        print(s.name)
        for label, text in (("", s.summary), ("source: ", s.source), ("success: ", s.success)):
            print(
                textwrap.fill(
                    label + text, width=96, initial_indent="    ", subsequent_indent="      "
                )
            )
        opts = [
            f"{f.name}={f.default!r}"
            for f in dataclasses.fields(s.cls.Config)
            if f.default is not dataclasses.MISSING
        ]
        if opts:
            print(
                textwrap.fill(
                    "options: " + ", ".join(opts),
                    width=96,
                    initial_indent="    ",
                    subsequent_indent="      ",
                )
            )
    return 0
