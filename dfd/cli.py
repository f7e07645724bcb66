"""``dfd`` — face restoration with Deep multi-scale component Dictionaries (DFDNet).

The command group only: each command lives with its kind (restore_commands, dictionary_commands, lifecycle, stack)
and imports nothing from here, so ``dfd --help`` and ``python -m dfd --help`` list the same commands."""
from __future__ import annotations

import sys

import click

from dfd import (
    deploy_command,
    dictionary_commands,
    export_command,
    lifecycle,
    registry_commands,
    restore_commands,
    serve,
    stack,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dfd")
def main() -> None:
    """Restore faces in photographs with Deep multi-scale component Dictionaries (DFDNet, ECCV 2020).

    Loads the official DFDNet release unchanged (or BasicSR's port, or dfd's own models), runs it on batches of
    faces, and manages component dictionaries. Run `dfd COMMAND --help` for each command.
    """


for _command in (restore_commands.sample, restore_commands.restore, dictionary_commands.build_dictionary_command,
                 dictionary_commands.dictionary, lifecycle.train, lifecycle.evaluate, lifecycle.compare, lifecycle.demo,
                 stack.stack, deploy_command.deploy, serve.serve, registry_commands.promote,
                 export_command.export):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
