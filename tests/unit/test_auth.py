"""Bearer-token checks: parsing, missing vs invalid, reload on change, fail closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.auth import INVALID_TOKEN, MISSING_TOKEN, TokenAuth, parse_tokens


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def bearer(token: str) -> list[tuple[str, str | bytes]]:
    return [("x-other", "1"), ("authorization", f"Bearer {token}")]


def test_parse_tokens_skips_comments_and_blanks() -> None:
    text = "# rotated 2024-05\n  alpha  \n\n#beta\ngamma\n"
    assert parse_tokens(text) == ["alpha", "gamma"]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("# service tokens\nalpha\ngamma\n")
    return path


def test_accepts_listed_tokens_only(token_file: Path) -> None:
    auth = TokenAuth(str(token_file))
    assert auth.check(bearer("alpha")) is None
    assert auth.check(bearer("gamma")) is None
    assert auth.check([("authorization", "bearer   alpha ")]) is None  # scheme is case-insensitive
    assert auth.check(bearer("beta")) == INVALID_TOKEN
    assert auth.check(bearer("alph")) == INVALID_TOKEN
    assert auth.check(bearer("# service tokens")) == INVALID_TOKEN
    assert auth.check(bearer("é")) == INVALID_TOKEN


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("x-other", "1")],
        [("authorization", "alpha")],
        [("authorization", "Basic alpha")],
        [("authorization", "Bearer ")],
        [("authorization", b"Bearer alpha")],
    ],
)
def test_missing_or_malformed_header(
    token_file: Path, metadata: list[tuple[str, str | bytes]]
) -> None:
    assert TokenAuth(str(token_file)).check(metadata) == MISSING_TOKEN


def test_reloads_when_the_file_changes(token_file: Path) -> None:
    clock = Clock()
    auth = TokenAuth(str(token_file), check_interval=1.0, clock=clock)
    token_file.write_text("delta-token-with-a-new-size\n")
    assert auth.check(bearer("alpha")) is None  # not re-checked before the interval
    clock.now = 1.5
    assert auth.check(bearer("alpha")) == INVALID_TOKEN
    assert auth.check(bearer("delta-token-with-a-new-size")) is None
    assert auth.token_count == 1


def test_unreadable_file_keeps_the_last_tokens(token_file: Path) -> None:
    clock = Clock()
    auth = TokenAuth(str(token_file), clock=clock)
    token_file.unlink()
    clock.now = 5.0
    assert auth.check(bearer("alpha")) is None
    assert not auth.reload_if_changed()


def test_empty_file_rejects_everything(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_text("# nothing yet\n")
    assert TokenAuth(str(path)).check(bearer("anything")) == INVALID_TOKEN


def test_missing_file_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        TokenAuth(str(tmp_path / "absent"))
