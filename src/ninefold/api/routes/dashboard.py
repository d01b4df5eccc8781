"""The dashboard: its files at /ui/, and / redirects there. Open to anyone
(the dashboard asks for a token itself once the cluster uses them)."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from ninefold.api.routing import ResourceRouter, add_routes

router = ResourceRouter()


@router.operation("GET", "/", role=None, tag="dashboard", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/")


def mount_dashboard(app: FastAPI, directory: Path) -> None:
    """Serve the dashboard's files from `directory` at /ui/ (and redirect / there);
    nothing when the directory is absent (a source tree without the files)."""
    if not directory.is_dir():
        return
    app.mount("/ui", StaticFiles(directory=directory, html=True), name="ui")
    add_routes(app, router)
