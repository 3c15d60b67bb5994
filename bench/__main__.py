"""``python -m bench``: the CPU benchmark (see ``bench/cpu.py``)."""

from bench.cpu import main

main()
