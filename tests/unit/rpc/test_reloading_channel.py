"""ReloadingChannel: a channel built again from TLS files that changed, the old one kept for the calls under way and
closed with it; unreadable files keep the channel built last (fake channels, real files)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from cag.rpc import reloading_channel
from cag.rpc.reloading_channel import ReloadingChannel
from cag.rpc.tls import ClientTls
from tests.support.pki import Pki, make_pki


@dataclass
class FakeChannel:
    tls: ClientTls
    closed: bool = False

    async def close(self, grace: float | None = None) -> None:
        self.closed = True


@pytest.fixture
def mounted(tmp_path: Path) -> tuple[Path, Pki, Pki]:
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    folder = tmp_path / "mounted"
    folder.mkdir()
    shutil.copy(old.client_cert_file, folder / "tls.crt")
    shutil.copy(old.client_key_file, folder / "tls.key")
    return folder, old, new


def channel_of(folder: Path) -> ReloadingChannel:
    tls = ClientTls.from_files(None, folder / "tls.crt", folder / "tls.key")
    return ReloadingChannel(FakeChannel, tls)  # type: ignore[arg-type]


def renew(folder: Path, pki: Pki) -> None:
    for source, name in ((pki.client_cert_file, "tls.crt"), (pki.client_key_file, "tls.key")):
        shutil.copy(source, folder / f".{name}")
        (folder / f".{name}").replace(folder / name)


async def test_changed_files_build_a_new_channel_and_the_old_one_closes_with_it(
    mounted: tuple[Path, Pki, Pki], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, old, new = mounted
    monkeypatch.setattr(reloading_channel, "CHECK_INTERVAL_S", 0.0)
    channel = channel_of(folder)
    first = channel.current()
    assert first.tls.certificate_chain == old.client_cert_file.read_bytes()  # type: ignore[attr-defined]
    assert channel.current() is first  # nothing changed: the same channel
    renew(folder, new)
    second = channel.current()
    assert second is not first and channel.generation == 1
    assert second.tls.certificate_chain == new.client_cert_file.read_bytes()  # type: ignore[attr-defined]
    assert not first.closed  # calls under way on it go on
    await channel.close()
    assert first.closed and second.closed  # type: ignore[attr-defined]


async def test_unreadable_files_keep_the_channel_built_last(
    mounted: tuple[Path, Pki, Pki], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _, new = mounted
    monkeypatch.setattr(reloading_channel, "CHECK_INTERVAL_S", 0.0)
    channel = channel_of(folder)
    first = channel.current()
    (folder / "tls.key").write_text("half-written")
    assert channel.current() is first and channel.generation == 0
    renew(folder, new)  # the rotation completes: read at the next call
    assert channel.current() is not first and channel.generation == 1


async def test_the_files_are_looked_at_once_per_interval(
    mounted: tuple[Path, Pki, Pki], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _, new = mounted
    monkeypatch.setattr(reloading_channel, "CHECK_INTERVAL_S", 3600.0)
    channel = channel_of(folder)
    first = channel.current()
    renew(folder, new)
    assert channel.current() is first  # within the interval: not looked at yet
    monkeypatch.setattr(reloading_channel, "CHECK_INTERVAL_S", 0.0)
    assert channel.current() is not first
