"""Flags read before the command line's parser runs: the base config (`--config`, `--preset`),
the processes to join (`--coordinator`, ...) and the devices a resumed run was told to use."""


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in `argv`, read before the command line's
    parser: the base config (`--config`, `--preset`) and the processes to join (`--coordinator`,
    ...) must be known before it runs."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None
