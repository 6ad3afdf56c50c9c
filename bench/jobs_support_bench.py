"""Bench helper: look up a user by name."""

from sqlalchemy import select

from yushan.models import User


def user(session, username: str) -> User:
    return session.scalar(select(User).where(User.username == username))
