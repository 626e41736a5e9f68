"""Instagram sessions: the cookies of a logged-in account, always outside the project.

``imgrate login`` asks for the password (and a 2FA code) once and saves Instaloader's
session file under ``~/.config/imgrate/`` (mode 0600); the crawl loads it when the
environment names the account (:data:`SESSION_USER_ENV`, optionally :data:`SESSION_ENV`).
A session file is never accepted inside a project (it could reach git, DVC or a shard) and
messages never show its content.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import instaloader
from instaloader.exceptions import InstaloaderException

from imgrate.errors import CrawlError, one_line
from imgrate.paths import find_project

log = logging.getLogger(__name__)

SESSION_ENV = "IMGRATE_INSTAGRAM_SESSION"  # path of an Instaloader session file
SESSION_USER_ENV = "IMGRATE_INSTAGRAM_USER"  # the account the session belongs to


def config_dir() -> Path:
    """Where ``imgrate login`` keeps sessions: ``$XDG_CONFIG_HOME/imgrate`` or ``~/.config/imgrate``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "imgrate"


def default_session_file(user: str) -> Path:
    return config_dir() / f"session-{user}"


def _refuse_inside(path: Path, project_root: Path | None) -> None:
    """Refuse a session file inside ``project_root`` or inside any project above the file itself
    (a folder with a dvc.yaml): it could reach git, DVC or a shard there."""
    resolved = path.expanduser().resolve()
    roots = [r for r in (project_root, find_project(resolved.parent)) if r is not None]
    for root in roots:
        if resolved.is_relative_to(root.resolve()):
            raise CrawlError(f"a session file holds your login cookies: keep it outside the project {root} "
                             "(it could reach git, DVC or a shard); the default is ~/.config/imgrate/")


def session_from_env(project_root: Path | None) -> tuple[str, Path] | None:
    """The (account, session file) named by the environment, or None to crawl anonymously.

    ``IMGRATE_INSTAGRAM_USER`` alone uses the file ``imgrate login`` saved; with
    ``IMGRATE_INSTAGRAM_SESSION`` the file is given. Messages never show a file's content.
    """
    user = os.environ.get(SESSION_USER_ENV, "").strip().lower()
    given = os.environ.get(SESSION_ENV, "").strip()
    if not user and not given:
        return None
    if not user:
        raise CrawlError(f"{SESSION_ENV} is set but {SESSION_USER_ENV} (the account it belongs to) is not")
    path = Path(given).expanduser() if given else default_session_file(user)
    if not path.is_file():
        where = f"the file named by {SESSION_ENV}" if given else str(path)
        raise CrawlError(f"no Instagram session for {user} in {where}: run `imgrate login {user}`")
    _refuse_inside(path, project_root)
    if path.stat().st_mode & 0o077:
        log.warning("the session file for %s is readable by others: chmod 600 it", user)
    return user, path


def load_session(loader: instaloader.Instaloader, user: str, path: Path) -> None:
    """Log ``loader`` in with a saved session (no request is made)."""
    try:
        with open(path, "rb") as fh:
            loader.context.load_session_from_file(user, fh)
    except Exception as err:
        raise CrawlError(f"cannot load the Instagram session of {user} ({type(err).__name__}); "
                         f"run `imgrate login {user}` again") from None


def save_session(loader: instaloader.Instaloader, path: Path, project_root: Path | None) -> Path:
    """Write the loader's session to ``path`` (mode 0600, folder 0700), atomically."""
    _refuse_inside(path, project_root)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            loader.context.save_session_to_file(fh)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def interactive_login(user: str, path: Path | None, project_root: Path | None) -> Path:
    """Ask for the password (and a 2FA code) on the terminal, log in, save the session."""
    user = user.strip().lstrip("@").lower()
    path = path.expanduser() if path is not None else default_session_file(user)
    _refuse_inside(path, project_root)  # before asking for a password
    loader = instaloader.Instaloader(quiet=False)
    try:
        loader.interactive_login(user)
    except InstaloaderException as err:
        text = one_line(err)
        hint = ""
        if "checkpoint" in text.lower() or "challenge" in text.lower():
            hint = (" Instagram wants this login confirmed: open instagram.com in a browser, log in and confirm it, "
                    "then run `imgrate login` again (or import the browser's cookies: "
                    f"`instaloader --load-cookies firefox --sessionfile {path}`).")
        raise CrawlError(f"login as {user} failed: {text}.{hint}") from None
    return save_session(loader, path, project_root)
