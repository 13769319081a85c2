"""The conformance suite, as the package ships it (zero3_conformance.suite): the repository's tests run the
same cases as `pytest --pyargs zero3_conformance`."""

from zero3_conformance.suite.test_contract import test_contract

__all__ = ["test_contract"]
