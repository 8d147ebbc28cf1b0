"""The contenders: each module runs as a process of its own (see run.py)."""
