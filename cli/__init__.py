"""The ``capture`` command line: a few lines per command over the library."""
