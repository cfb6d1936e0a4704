"""The ``avcall`` command: argument parsing, one module per command group.

Each module exposes ``register(subparsers)`` (or ``add_train`` / ``add_eval`` /
``add_bench`` for the second-level groups) and handlers that turn arguments
into a config dataclass and call one library function. Nothing here holds
logic a test would want to call without a command line.
"""
