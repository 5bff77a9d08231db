"""The ``faket`` command line, one module per group of commands (``faket.cli`` assembles them)."""
