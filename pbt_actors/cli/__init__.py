"""The command line (layer 5, the top): the parser and one module per command."""
