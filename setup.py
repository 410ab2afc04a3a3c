"""The one compiled module (bridge/media/_fastrelay.c): optional, so an install without a C compiler still works
(the relay then runs its Python twins, see bridge/media/fastrelay.py). Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("bridge.media._fastrelay", ["bridge/media/_fastrelay.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"])])
