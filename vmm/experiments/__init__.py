"""Experiments at scale: one snapshot, many inputs, a result each (`microvm fanout`).

    from vmm.experiments import run_experiments
    results = run_experiments("base.snap", "inputs.jsonl", engine="local", workers=2)

`inputs` (the Input record, read from JSON Lines), `worker` (one process's runs from a reset
point, the Result record), `engines` (local processes or Ray actors, and the loop feeding them),
`summary` (the end-of-run summary).
"""
from __future__ import annotations

from vmm.experiments.engines import FanoutError, iter_experiments, run_experiments
from vmm.experiments.inputs import Input, InputError, MemoryWrite, RegisterValue, read_inputs
from vmm.experiments.worker import Result, Worker

__all__ = [
    "FanoutError",
    "Input",
    "InputError",
    "MemoryWrite",
    "RegisterValue",
    "Result",
    "Worker",
    "iter_experiments",
    "read_inputs",
    "run_experiments",
]
