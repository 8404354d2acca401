#!/usr/bin/env python3
"""Print the version from fastim2col/_version.py: the single source meson reads at configure time."""
import pathlib
import re

text = (pathlib.Path(__file__).resolve().parent.parent / "fastim2col" / "_version.py").read_text()
print(re.search(r'__version__ = "([^"]+)"', text).group(1))
