"""Presets shared across teams: files shipped inside an installed preset package.

A team's data or eval presets can point at files in their own package with
`${package_file:acme_presets/files/support.jsonl}` (registered when itune's configs are composed), so the
presets work wherever the package is installed.
"""

from __future__ import annotations

from importlib.resources import files


def package_file(spec: str) -> str:
    """Absolute path of `<package>/<relative path>` inside an importable package.

    >>> package_file("itune/resources/demo/finance.jsonl").endswith("finance.jsonl")
    True
    """
    package, sep, rest = spec.partition("/")
    if not sep or not rest:
        raise ValueError(f"package_file needs '<package>/<path inside it>', got {spec!r}")
    try:
        path = files(package).joinpath(rest)
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            f"package {package!r} is not importable: pip install it, or add its folder to PYTHONPATH"
        ) from e
    if not path.is_file():
        raise FileNotFoundError(f"{rest!r} not found in package {package!r} ({files(package)})")
    return str(path)
