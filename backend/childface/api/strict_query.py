"""Unknown query parameters are refused: 422 `invalid_input`, naming each one and what the route takes.

A misspelt or unsupported parameter (`GET /children?externalid=C002`) would
otherwise be ignored, and the caller would act on an answer to a question it
did not ask (every child instead of one). The parameters a route knows are the
query parameters it declares, its dependencies' included, read from FastAPI's
own dependency tree, so a new parameter needs no list kept here.

Wired into every router by `create_app` (`STRICT_QUERY` as a router dependency).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel


def declared_query_parameters(route: APIRoute) -> frozenset[str]:
    """The query parameter names `route` takes (aliases as sent), its dependencies' included.

    A walk over a handful of objects per request (a few microseconds): nothing to cache.
    """
    found: set[str] = set()
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop()
        for field in dependant.query_params:
            model = _query_model(field.field_info.annotation)
            if model is not None:  # a Pydantic model of query parameters: its fields are the names
                found.update(f.alias or name for name, f in model.model_fields.items())
            else:
                found.add(field.alias)
        pending.extend(dependant.dependencies)
    return frozenset(found)


def _query_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def refuse_unknown_query(request: Request) -> None:
    """Raise 422 when the query string has a parameter the matched route does not declare."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = declared_query_parameters(route)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        accepted = f"this endpoint takes {', '.join(sorted(known))}" if known else "this endpoint takes none"
        message = f"unknown query parameter ({accepted})"
        raise RequestValidationError(
            [{"loc": ("query", name), "msg": message, "type": "extra_forbidden"} for name in unknown]
        )


#: the router dependency `create_app` adds to every route
STRICT_QUERY = Depends(refuse_unknown_query)
