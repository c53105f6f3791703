"""Packaging of the one `callisto` namespace (metadata and dependencies are in pyproject.toml).

The card's top-level folders map onto `callisto` through setuptools' `package-dir`, never through
links: an editable install and a built wheel import the same module names.
"""

from setuptools import find_packages, setup

# import name -> folder; each folder's sub-packages follow it.
PACKAGE_DIRS = {
    "callisto": "clients/python/callisto",
    "callisto.services": "services",
    "callisto.gateway": "gateway",
    "callisto.mesh": "deploy/mesh",
    # Data only: the Triton model repository and the sample tenants.
    "callisto.deploy": "deploy",
}
DATA_ONLY = {"callisto.deploy"}


def _packages() -> list[str]:
    packages = []
    for name, folder in PACKAGE_DIRS.items():
        packages.append(name)
        if name not in DATA_ONLY:
            packages += [f"{name}.{sub}" for sub in find_packages(folder)]
    return packages


if __name__ == "__main__":
    setup(
        package_dir=PACKAGE_DIRS,
        packages=_packages(),
        package_data={
            "": ["py.typed", "*.pyi"],
            "callisto.deploy": ["triton/*/config.pbtxt", "triton/*/1/*.py", "samples/**/*"],
        },
        include_package_data=False,
    )
