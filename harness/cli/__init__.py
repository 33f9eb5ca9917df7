"""`tapmig COMMAND`: parse, call one function below, print; the exit code comes from the
error class.

May import: everything.
"""
