"""Relational storage: models, engines, sessions and the unit of work."""

from childface.db.models import Base
from childface.db.session import SYSTEM, Actor, Database, DatabaseError, UnitOfWork

__all__ = ["SYSTEM", "Actor", "Base", "Database", "DatabaseError", "UnitOfWork"]
