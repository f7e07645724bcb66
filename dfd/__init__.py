"""The ``dfd`` command line: a thin shell over dfdcore (single-image work) and, later, the flows."""
