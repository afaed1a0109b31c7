"""`phikit bench` (the command's own description: `phikit bench --help`, from `cli.py`).

The parent (`cli.py` parses, reports; `driver.py` spawns children, takes medians and ratios) never times anything
itself; every measurement runs in a fresh child process, `python -m phikit.bench.<child> ARGS`: `child` (one engine
alone), `paired` (phikit and a peer taking turns in one process), `llama` (llama.cpp alone) and `roofline` (the
memory-read ceiling). `engines.py` holds the shapes, the random checkpoint and the torch engines' loading and timing.
"""

from .cli import format_paired, format_report, main
from .driver import (BF16_FORMATS, GGUF_TYPES, available_engines, column_name, export_for_llama_cpp, measure,
                     measure_llama_cpp, measure_roofline, paired_specs, run_bench, run_paired)
from .engines import SHAPES, write_checkpoint

__all__ = ["BF16_FORMATS", "GGUF_TYPES", "SHAPES", "available_engines", "column_name", "export_for_llama_cpp",
           "format_paired", "format_report", "main", "measure", "measure_llama_cpp", "measure_roofline",
           "paired_specs", "run_bench", "run_paired", "write_checkpoint"]
