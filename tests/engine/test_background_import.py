"""BackgroundImport loads its modules in another thread and raises an import's error in the caller's."""

from __future__ import annotations

import pytest

from tests.fresh_python import python


def test_the_modules_are_imported_by_join():
    out = python(
        """
        import sys
        from fedsim.engine.background_import import BackgroundImport
        assert "fedsim.engine.worker" not in sys.modules
        later = BackgroundImport("fedsim.engine.worker", "flwr.simulation")
        later.join()
        print("fedsim.engine.worker" in sys.modules, "flwr.simulation" in sys.modules)
        """
    )
    assert out.split() == ["True", "True"]


def test_an_import_error_is_raised_by_join():
    from fedsim.engine.background_import import BackgroundImport

    later = BackgroundImport("json", "fedsim.no_such_module")
    with pytest.raises(ModuleNotFoundError, match="fedsim.no_such_module"):
        later.join()
