"""The ``relive`` command line."""
