"""``openalign`` command: argparse at the edge, one module per subcommand (each has ``register``).

Handlers import the library lazily, and each subcommand's flags (generated from its config
dataclass) are added only when that subcommand is used, so ``openalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from openalign.cli._config_args import LazyParser

# group name -> modules registering subcommands in it; "" = top level
COMMANDS: dict[str, list[str]] = {
    "": ["openalign.cli.train", "openalign.cli.demo", "openalign.cli.search", "openalign.cli.serve",
         "openalign.cli.embed"],
    "data": ["openalign.cli.data_synth", "openalign.cli.data_build", "openalign.cli.data_score",
             "openalign.cli.data_icons"],
    "tokenizer": ["openalign.cli.tokenizer"],
    "eval": ["openalign.cli.eval_retrieval", "openalign.cli.eval_classify", "openalign.cli.eval_suite"],
    "index": ["openalign.cli.index"],
    "finetune": ["openalign.cli.finetune"],
}
GROUP_HELP = {
    "data": "build and inspect training data",
    "tokenizer": "WordPiece tokenizer",
    "eval": "evaluate a model",
    "index": "build and extend a search index",
    "finetune": "fine-tune a pretrained model (retrieval, classification)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openalign", description="OpenALIGN: open ALIGN, end to end")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=LazyParser)
    for group, modules in COMMANDS.items():
        target = sub
        if group:
            gp = sub.add_parser(group, help=GROUP_HELP.get(group, group))
            target = gp.add_subparsers(dest=f"{group}_command", required=True)
        for name in modules:
            importlib.import_module(name).register(target)
    return parser


def main(argv: list[str] | None = None) -> int:
    from openalign.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
    except (UserError, FileNotFoundError) as exc:
        print(f"openalign: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("openalign: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
