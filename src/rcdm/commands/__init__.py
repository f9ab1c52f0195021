"""CLI subcommands: one module each, `add_parser(subparsers)`; see rcdm.cli."""
