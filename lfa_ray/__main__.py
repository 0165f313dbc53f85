"""``python -m lfa_ray COMMAND [ARGS]``: the commands of :mod:`lfa_ray.cli` under one name
(``python -m lfa_ray.COMMAND`` and the ``lfa-COMMAND`` console scripts run the same)."""

import sys

from lfa_ray import cli

COMMANDS = {name: getattr(cli, name) for name in ("tune", "train", "predict", "evaluate", "export", "data", "report")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m lfa_ray {{{','.join(COMMANDS)}}} [ARGS]  (python -m lfa_ray COMMAND --help: its "
              f"arguments)")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"lfa_ray {cli.package_version()}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: {argv[0]!r} is not a command; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
