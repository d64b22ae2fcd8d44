"""The one shape of every error answer: {"error": {"type", "message", "details"?}}."""

from __future__ import annotations

from fastapi.responses import JSONResponse


def error_response(
    status: int, kind: str, message: str, details: list | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict = {"type": kind, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)
