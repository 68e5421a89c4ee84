"""pytest fixtures that run a real gsi receiver: ``gsi_guest`` and ``gsi_guest_process``.

Installed with gsi as the ``pytest11`` entry point named ``gsi``: any project that has gsi
installed gets the fixtures with no conftest. ``-p no:gsi`` turns the plugin off.

- ``gsi_guest`` (async, pytest-trio): :func:`gsi.testing.open_guest` in the test's own
  trio run; yields a :class:`gsi.testing.Guest` (``url``, ``root``, ``path()``,
  ``await copy()``, ``stats``). Works with ``trio_mode = true`` and with
  ``@pytest.mark.trio``; a test that is not a trio test fails at setup with a message
  that points to ``gsi_guest_process``.
- ``gsi_guest_process`` (sync, any test): :func:`gsi.testing.guest_process`, a
  ``python -m gsi.cli`` subprocess; yields a :class:`gsi.testing.GuestProcess` (``url``,
  ``root``, ``path()``, ``copy()``, ``log()``). The test fails at teardown if the receiver
  died, did not exit 0 on SIGTERM, or logged a traceback.

Both put the destination root in the test's ``tmp_path`` (``tmp_path / "gsi-root"``) and
take receiver options from the ``gsi_config`` marker (fields of
:class:`gsi.server.ReceiverConfig`), on the test, its class or its module::

    @pytest.mark.gsi_config(max_fragment=65536, trim_write_echo=True)
    def test_big_fragments(gsi_guest_process): ...

This module imports only pytest (and pytest-trio's ``trio_fixture``, which pytest-trio's
own plugin has loaded anyway); gsi.testing loads when a fixture is first used. Importing
it does import the ``gsi`` package, whose ``__init__`` loads the receiver's modules (about
80 ms when this was written), in every pytest run of an environment with gsi installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

if TYPE_CHECKING:
    from .testing import Guest, GuestProcess

MARKER: Final = "gsi_config"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): receiver options (gsi.server.ReceiverConfig fields, e.g. "
        "max_fragment=65536) for the gsi_guest and gsi_guest_process fixtures",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Check a test's use of the fixtures before any fixture runs.

    A failure here is a clean setup error. From inside ``gsi_guest`` it would be worse:
    pytest-trio reports a trio fixture's failure as a test failure, and its own refusal of
    a non-trio test leaves the fixture unusable for the tests that follow (pytest-trio 0.8
    with pytest 8/9).
    """
    names = getattr(item, "fixturenames", ())
    in_process, in_subprocess = "gsi_guest" in names, "gsi_guest_process" in names
    if not (in_process or in_subprocess):
        return
    if in_process and not _pytest_trio_active(item.config):
        pytest.fail(f"{item.name}: the gsi_guest fixture needs pytest-trio (pip install "
                    "pytest-trio); a test that is not async can use gsi_guest_process",
                    pytrace=False)
    if in_process and item.get_closest_marker("trio") is None:
        pytest.fail(f"{item.name}: gsi_guest is an async fixture for trio tests (an async "
                    "test with pytest-trio's trio_mode = true, or @pytest.mark.trio); "
                    "a test that is not async can use gsi_guest_process", pytrace=False)
    options = receiver_options(item)
    from .server import ReceiverConfig
    from .testing import receiver_args

    try:
        ReceiverConfig(root=Path("gsi-root"), **options)
        if in_subprocess:
            receiver_args("gsi-root", **options)
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    else:
        return
    pytest.fail(f"{item.name}: @pytest.mark.{MARKER}: {problem}", pytrace=False)


def _pytest_trio_active(config: pytest.Config) -> bool:
    """pytest-trio registered, by entry point (``trio``) or as ``-p pytest_trio.plugin``."""
    return any(getattr(plugin, "__name__", None) == "pytest_trio.plugin"
               for plugin in config.pluginmanager.get_plugins())


def receiver_options(node: pytest.Item) -> dict[str, Any]:
    """The ``gsi_config`` marker options of a test: those of its module, then its class,
    then its own (the closest marker wins a conflict)."""
    options: dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers(MARKER))):
        if marker.args:
            pytest.fail(f"{node.name}: @pytest.mark.{MARKER} takes keyword options only, "
                        f"e.g. @pytest.mark.{MARKER}(max_fragment=65536); got "
                        f"{marker.args!r}", pytrace=False)
        options.update(marker.kwargs)
    return options


def _make_gsi_guest() -> Any:
    try:
        from pytest_trio import trio_fixture  # type: ignore[import-untyped]
    except ImportError:

        def needs_pytest_trio() -> None:
            """Needs pytest-trio: ``pip install pytest-trio`` (or use gsi_guest_process)."""
            pytest.fail("the gsi_guest fixture needs pytest-trio (pip install pytest-trio); "
                        "tests that are not async can use gsi_guest_process",
                        pytrace=False)

        return pytest.fixture(needs_pytest_trio, name="gsi_guest")

    async def gsi_guest(request: pytest.FixtureRequest,
                        tmp_path: Path) -> AsyncIterator[Guest]:
        """A receiver in this trio run on a temp Unix socket, root ``tmp_path/gsi-root``.

        Yields a ``gsi.testing.Guest``: ``.url`` for the host, ``.path("/a/b")`` for where
        a guest path lands, ``await .copy(src, "/dir/", create_full_path=True)``. Trio
        tests only (``trio_mode = true`` or ``@pytest.mark.trio``); options from the
        ``gsi_config`` marker.
        """
        from .testing import open_guest

        async with open_guest(tmp_path / "gsi-root",
                              **receiver_options(request.node)) as guest:
            yield guest

    return trio_fixture(gsi_guest)


gsi_guest = _make_gsi_guest()


@pytest.fixture
def gsi_guest_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GuestProcess]:
    """``gsi-receiver`` as a subprocess on a temp Unix socket, root ``tmp_path/gsi-root``.

    Yields a ``gsi.testing.GuestProcess``: ``.url``, ``.path("/a/b")``,
    ``.copy(src, "/dir/", create_full_path=True)`` (sync; raises ``CopyFailed`` with the
    guest's status), ``.log()``. Any test can use it (an async one copies with
    ``await host_sim.copy_vm_file(guest.url, ...)``, not ``.copy``). Fails the test at teardown
    if the receiver died, did not exit 0 on SIGTERM or logged a traceback (its log is
    ``tmp_path/gsi-receiver.log``). Options from the ``gsi_config`` marker.
    """
    from .testing import GuestProcessError, guest_process

    failure = None
    try:
        with guest_process(tmp_path / "gsi-root", log_path=tmp_path / "gsi-receiver.log",
                           **receiver_options(request.node)) as guest:
            yield guest
    except GuestProcessError as exc:
        failure = str(exc)
    if failure is not None:  # outside the except block: no "during handling" chain
        pytest.fail(failure, pytrace=False)
