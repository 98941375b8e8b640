"""qacloud: a Buildbot master package that keeps Apache CloudStack's master branch green."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def requirements() -> list[str]:
    lines = (HERE / "requirements.in").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


RUNTIME = [
    r
    for r in requirements()
    if r.split("=")[0].split("<")[0].split(">")[0]
    not in {"pytest", "pytest-timeout", "hypothesis", "ruff", "aiosmtpd", "pynose", "matplotlib"}
]

setup(
    name="qacloud",
    version="0.1.0",
    description="Gate Apache CloudStack staging -> master with Marvin BVTs on isolated bare-metal pools",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=["master", "steps", "workers", "schedulers", "lab", "bench"],
    package_data={"master": ["templates/*"], "lab": ["demo/*", "demo/**/*"]},
    install_requires=RUNTIME,
    extras_require={"test": ["pytest", "pytest-timeout", "hypothesis", "ruff", "aiosmtpd", "pynose"]},
    entry_points={"console_scripts": ["qacloud = master.cli:main"]},
    classifiers=["Framework :: Twisted", "Programming Language :: Python :: 3.11"],
)
