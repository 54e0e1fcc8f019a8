"""Builds the optional native TLB fill (vmm/_fill.c); everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and the VMM uses the pure
Python fill (slower on memory-heavy guests, same results). See vmm/native_fill.py.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("vmm._fill", sources=["vmm/_fill.c", "vmm/_sysreg.c"], depends=["vmm/_sysreg.h"], optional=True)])
