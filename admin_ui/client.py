"""A small HTTP client for the childface API, turning every failure into a sentence for staff."""

from __future__ import annotations

from typing import Any

import requests

from admin_ui import config


class ApiError(Exception):
    """Something the API refused or could not do; `message` is fit to show to staff."""

    def __init__(self, status: int, code: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        #: the error's `details` (e.g. the later change a refused undo names), when it has them
        self.details = details


class Api:
    def __init__(self, base_url: str | None = None, token: str | None = None) -> None:
        self.base_url = (base_url or config.API_URL).rstrip("/")
        self.token = token
        self.http = requests.Session()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = self.http.request(
                method, self.base_url + path, headers=headers, timeout=config.TIMEOUT_S, **kwargs
            )
        except requests.ConnectionError:
            raise ApiError(0, "unreachable", f"The childface server cannot be reached at {self.base_url}. "
                           "Is it running?") from None
        except requests.Timeout:
            raise ApiError(0, "timeout", "The childface server took too long to answer. Try again.") from None
        if response.status_code >= 400:
            raise _error(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v not in (None, "")}
        return self._request("GET", path, params=clean).json()

    def get_bytes(self, path: str, **params: Any) -> bytes:
        clean = {k: v for k, v in params.items() if v not in (None, "")}
        return self._request("GET", path, params=clean).content

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        response = self._request("POST", path, json=json, **kwargs)
        return response.json() if response.content else None

    def patch(self, path: str, json: Any) -> Any:
        return self._request("PATCH", path, json=json).json()

    def delete(self, path: str) -> Any:
        response = self._request("DELETE", path)
        return response.json() if response.content else None


def _error(response: requests.Response) -> ApiError:
    details = None
    try:
        body = response.json()["error"]
        code, message = str(body.get("code", "error")), str(body.get("message", ""))
        details = body.get("details") if isinstance(body.get("details"), list) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "error", ""
    if response.status_code == 401 and code in {"invalid_token", "unauthorized"}:
        message = "Your session has ended. Please sign in again."
    elif response.status_code == 403 and code == "password_change_required":
        message = "Choose a new password first (on the Sign in page)."
    elif response.status_code == 403:
        message = "Your account is not allowed to do this. Ask an administrator."
    elif response.status_code >= 500:
        message = f"The server had a problem ({message or response.status_code}). Try again or tell IT."
    message = message or f"Request failed ({response.status_code})."
    return ApiError(response.status_code, code, message, details)
