"""Unit tests of output capping and spec validation (no sandbox needed)."""

from __future__ import annotations

import pytest

from redline.errors import UserError
from redline.sandbox.capture import CappedStream
from redline.sandbox.spec import GIB, MIB, Limits, SandboxSpec, format_size, parse_size


def test_capped_stream_keeps_everything_under_the_cap() -> None:
    stream = CappedStream(100)
    for chunk in (b"abc", b"def"):
        stream.feed(chunk)
    assert stream.value() == b"abcdef" and not stream.truncated and stream.total == 6


def test_capped_stream_keeps_head_and_tail_with_a_marker() -> None:
    stream = CappedStream(10)
    stream.feed(b"HEAD" + b"x" * 1000)
    stream.feed(b"y" * 1000 + b"TAIL")
    value = stream.value()
    assert value.startswith(b"HEADx") and value.endswith(b"yTAIL")
    assert stream.truncated and stream.total == 2008
    assert b"2008 bytes printed, 1998 bytes omitted" in value


def test_sizes_parse_and_format() -> None:
    assert parse_size("512M") == 512 * MIB
    assert parse_size("2GiB") == 2 * GIB
    assert parse_size("1.5g") == int(1.5 * GIB)
    assert parse_size("4096") == 4096
    assert format_size(2 * GIB) == "2 GiB"
    with pytest.raises(UserError, match="invalid size '12x'"):
        parse_size("12x")


@pytest.mark.parametrize("limits", [dict(memory_bytes=1), dict(max_processes=0), dict(cpus=0),
                                    dict(wall_time_s=-1), dict(workspace_bytes=10)])
def test_invalid_limits_are_user_errors(limits) -> None:
    with pytest.raises(UserError, match="invalid sandbox limits"):
        Limits(**limits)


def test_invalid_spec_fields_are_user_errors() -> None:
    with pytest.raises(UserError):
        SandboxSpec(ro_paths={"relative": "/x"})
    with pytest.raises(UserError):
        SandboxSpec(env={"A=B": "1"})
    with pytest.raises(UserError):
        SandboxSpec(hostname="bad host")
