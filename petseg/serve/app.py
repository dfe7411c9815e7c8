"""The FastAPI application speaking the nnInteractive remote protocol.

Paths, headers and the packed format come from `nninteractive-client`
(`nnInteractive.inference.remote`), so the wire cannot drift from the client's. Every
route but `/healthz` wants the bearer key when the server has one (401); every route past
`/claim` wants a live lease (410); bad payloads are a 4xx with one line (`wire`). No path
from a request is ever opened: studies come only from the `--cases` folder given at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from nnInteractive.inference.remote import _protocol as P
from starlette.concurrency import run_in_threadpool

from petseg import __version__
from petseg.errors import PetsegError
from petseg.inference.predictor import Predictor
from petseg.serve.leases import Lease, LeaseGoneError, Leases, ServerFullError
from petseg.serve.lesions import LesionSession, scribble_voxels
from petseg.serve.studies import NoStudyError, StudyIndex
from petseg.serve.wire import (
    RequestError,
    box,
    coordinates,
    flag,
    json_object,
    meta_header,
    pack_answer,
    unpack,
)

log = logging.getLogger(__name__)

SUPPORTED = {"points": True, "scribble": True, "bbox2d": True, "bbox3d": True,
             "lasso": False}
"""What a viewer may send: points and scribbles (as clicks), boxes (a click at the box's
hottest voxel); no lassos."""


@dataclasses.dataclass
class ServeOptions:
    """Limits and timings of one server."""

    api_key: str | None = None
    max_sessions: int = 1
    idle_timeout_s: float = 600.0
    liveness_timeout_s: float = 60.0
    sweep_interval_s: float = 15.0
    max_upload_bytes: int = 2 << 30


def capabilities() -> dict[str, Any]:
    """The `/capabilities` answer: only what works here."""
    return {"supported_interactions": SUPPORTED,
            "channel_mapping": {"points": [0, 1], "scribble": [0, 1]},
            "num_interaction_channels": 2, "supports_initial_label": False,
            "supports_zero_shot_label_refinement": False,
            "preferred_scribble_thickness": [2, 2, 2], "interaction_decay": None,
            "patch_size": None, "do_autozoom": False,
            "inference_session_version": f"petseg-{__version__}", "license": None,
            "supports_undo": True, "segment": "lesions"}


def prediction(ran: bool, answer: tuple[list[list[int]], np.ndarray] | None) -> Response:
    """The packed part of the mask that changed, with `X-Meta {"ran_prediction", "bbox"}`."""
    if not ran or answer is None:
        meta = {"ran_prediction": ran, "bbox": None}
        return Response(b"", media_type=P.CONTENT_TYPE_OCTET_STREAM,
                        headers={P.META_HEADER: json.dumps(meta)})
    bounds, part = answer
    meta = {"ran_prediction": True, "bbox": bounds, "dtype": str(part.dtype),
            "shape": list(part.shape)}
    return Response(pack_answer(part),
                    media_type=P.CONTENT_TYPE_OCTET_STREAM,
                    headers={P.META_HEADER: json.dumps(meta)})


class Server:
    """The ensemble, the studies and the leases behind the routes."""

    def __init__(self, predictors: Predictor | Sequence[Predictor], studies: StudyIndex,
                 options: ServeOptions) -> None:
        if isinstance(predictors, Predictor):
            predictors = [predictors]
        # one ensemble per device, each with its lock: one network run at a time per device
        self.devices = [(predictor, threading.Lock()) for predictor in predictors]
        self.studies, self.options = studies, options
        self.leases = Leases(options.max_sessions, options.idle_timeout_s,
                             options.liveness_timeout_s)

    def least_busy_device(self) -> tuple[Predictor, threading.Lock]:
        """The device whose ensemble serves the fewest readers' studies now (the first on
        ties), so `--devices` spreads the readers over the GPUs."""
        serving = [lesions.session.predictor for lesions in self.leases.studies()]
        return min(self.devices, key=lambda device: sum(p is device[0] for p in serving))

    def authorise(self, request: Request) -> None:
        key = self.options.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(
                given[len("Bearer "):].encode(), key.encode()):
            raise RequestError("missing or wrong API key (Authorization: Bearer ...)", 401)

    async def body(self, request: Request, what: str) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > \
                self.options.max_upload_bytes:
            raise RequestError(f"{what}: body of {declared} bytes over the server's limit of "
                             f"{self.options.max_upload_bytes}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.options.max_upload_bytes:
                raise RequestError(f"{what}: body over the server's limit of "
                                 f"{self.options.max_upload_bytes} bytes", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def json_body(self, request: Request, what: str) -> dict[str, Any]:
        """The request's body as one JSON object, the key checked first."""
        self.authorise(request)
        return json_object(await self.body(request, what), what)

    def lesions(self, lease: Lease, what: str, buffer: bool = True) -> LesionSession:
        if lease.lesions is None:
            raise RequestError(f"{what}: no image yet; call set_image first", 409)
        if buffer and lease.lesions.viewer is None:
            raise RequestError(f"{what}: no target buffer yet; call set_target_buffer first", 409)
        return lease.lesions

    def set_image(self, lease: Lease, body: bytes, meta: dict[str, Any]) -> dict[str, Any]:
        image = unpack(body, "set_image", (4,), "biuf", self.options.max_upload_bytes)
        if image.shape[0] not in (1, 2):
            raise RequestError(f"set_image: {image.shape[0]} channels; send the PET as "
                             "[1, ...] or SUV and CT as [2, ...]")
        properties = meta.get("image_properties") or {}
        spacing = properties.get("spacing") if isinstance(properties, dict) else None
        if spacing is not None and not (
                isinstance(spacing, list) and len(spacing) == 3
                and all(isinstance(s, int | float) and not isinstance(s, bool) and s != 0
                        and math.isfinite(s) for s in spacing)):
            raise RequestError("set_image: image_properties.spacing must be three non-zero mm")
        if spacing is not None:  # napari-nifti's layers have a signed scale: a flipped axis
            spacing = [abs(float(s)) for s in spacing]
        lease.lesions = None  # the previous study goes first
        try:
            study = self.studies.match(image, spacing)
        except NoStudyError as exc:
            raise RequestError(f"set_image: {exc}", 422) from None
        predictor, compute = self.least_busy_device()
        lease.lesions = LesionSession(predictor, study,
                                      study.orientation.spacing(study.pet.GetSpacing()),
                                      compute=compute)
        return {"original_image_shape": list(image.shape), "study": study.name}

    def interact(self, lease: Lease, what: str, add: Callable[[LesionSession], None],
                 run: bool) -> Response:
        lesions = self.lesions(lease, what)
        add(lesions)
        if not run:
            return prediction(False, None)
        return prediction(True, lesions.answer())


def _routes(app: FastAPI, server: Server) -> None:
    """The protocol's routes on `app`."""

    def lease_of(request: Request) -> contextlib.AbstractContextManager[Lease]:
        return server.leases.using(request.headers.get(P.LEASE_HEADER))

    @app.get(P.PATH_HEALTHZ)
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get(P.PATH_CAPABILITIES)
    def caps(request: Request) -> dict[str, Any]:
        server.authorise(request)
        return capabilities()

    @app.post(P.PATH_CLAIM)
    def claim(request: Request) -> dict[str, Any]:
        server.authorise(request)
        leases = server.leases
        return {"lease_token": leases.claim(), "idle_timeout_seconds": leases.idle_timeout_s,
                "liveness_timeout_seconds": leases.liveness_timeout_s,
                "max_sessions": leases.max_sessions}

    @app.post(P.PATH_RELEASE)
    def release(request: Request) -> dict[str, Any]:
        server.authorise(request)
        server.leases.release(request.headers.get(P.LEASE_HEADER))
        return {"released": True}

    @app.post(P.PATH_HEARTBEAT)
    def heartbeat(request: Request) -> dict[str, Any]:
        server.authorise(request)
        lease = server.leases.get(request.headers.get(P.LEASE_HEADER))
        return {"remaining_seconds": server.leases.remaining_s(lease)}

    @app.get(P.PATH_LEASE_STATUS)
    def lease_status(request: Request) -> dict[str, Any]:
        server.authorise(request)
        lease = server.leases.peek(request.headers.get(P.LEASE_HEADER))
        return {"remaining_seconds": server.leases.remaining_s(lease),
                "idle_timeout_seconds": server.leases.idle_timeout_s,
                "automatic_run": lease.lesions.status() if lease.lesions else "no image"}

    @app.post(P.PATH_SET_IMAGE)
    async def set_image(request: Request) -> dict[str, Any]:
        server.authorise(request)
        meta = meta_header(request.headers.get(P.META_HEADER), "set_image")
        body = await server.body(request, "set_image")

        def work() -> dict[str, Any]:
            with lease_of(request) as lease:
                return server.set_image(lease, body, meta)

        return await run_in_threadpool(work)

    _buffer_routes(app, server, lease_of)
    _answer_routes(app, server, lease_of)
    _interaction_routes(app, server, lease_of)


def _buffer_routes(app: FastAPI, server: Server,
                   lease_of: Callable[[Request], contextlib.AbstractContextManager[Lease]]
                   ) -> None:
    """Target buffer, autozoom, reset."""

    json_body = server.json_body

    @app.post(P.PATH_SET_TARGET_BUFFER)
    async def set_target_buffer(request: Request) -> dict[str, Any]:
        data = await json_body(request, "set_target_buffer")
        with lease_of(request) as lease:
            lesions = server.lesions(lease, "set_target_buffer", buffer=False)
            if data.get("shape") != list(lesions.shape):
                raise RequestError(f"set_target_buffer: shape {data.get('shape')!r}; the image "
                                 f"is {list(lesions.shape)}")
            if data.get("dtype") not in ("bool", "uint8", "int8", "uint16", "int16", "uint32",
                                         "int32", "uint64", "int64"):
                raise RequestError(f"set_target_buffer: dtype {data.get('dtype')!r}; use a "
                                 "bool or integer buffer")
            lesions.set_viewer_buffer()
        return {}

    @app.post(P.PATH_SET_DO_AUTOZOOM)
    async def set_do_autozoom(request: Request) -> dict[str, Any]:
        data = await json_body(request, "set_do_autozoom")
        flag(data, "do_autozoom", "set_do_autozoom")
        with lease_of(request):
            return {}  # the whole study is segmented: there is nothing to zoom

    @app.post(P.PATH_RESET_INTERACTIONS)
    async def reset_interactions(request: Request) -> dict[str, Any]:
        await json_body(request, "reset_interactions")
        with lease_of(request) as lease:
            if lease.lesions is not None:
                lease.lesions.reset()
        return {}



def _answer_routes(app: FastAPI, server: Server,
                   lease_of: Callable[[Request], contextlib.AbstractContextManager[Lease]]
                   ) -> None:
    """Undo, predict and the clicks so far."""
    json_body = server.json_body

    @app.post(P.PATH_UNDO)
    async def undo(request: Request) -> Response:
        await json_body(request, "undo")

        def work() -> Response:
            with lease_of(request) as lease:
                lesions = server.lesions(lease, "undo")
                ran = lesions.undo()
                return prediction(ran, lesions.answer() if ran else None)

        return await run_in_threadpool(work)

    @app.post(getattr(P, "PATH_PREDICT", "/predict"))
    async def predict(request: Request) -> Response:
        await json_body(request, "predict")

        def work() -> Response:
            with lease_of(request) as lease:
                return prediction(True, server.lesions(lease, "predict").answer())

        return await run_in_threadpool(work)

    @app.get("/petseg/clicks")
    def clicks(request: Request) -> dict[str, Any]:
        """The clicks so far as a lesion-clicks.json (PET voxel indices x, y, z)."""
        server.authorise(request)
        with lease_of(request) as lease:
            found = server.lesions(lease, "clicks", buffer=False).clicks()
        points = [{"point": list(p), "name": "tumor"} for p in found.tumour] + [
            {"point": list(p), "name": "background"} for p in found.background]
        return {"version": {"major": 1, "minor": 0}, "type": "Multiple points",
                "points": points}


def _interaction_routes(app: FastAPI, server: Server,
                        lease_of: Callable[[Request], contextlib.AbstractContextManager[Lease]]
                        ) -> None:
    """Points, scribbles and boxes; lassos and initial masks refused (not advertised)."""

    @app.post(P.PATH_ADD_POINT)
    async def add_point(request: Request) -> Response:
        server.authorise(request)
        data = json_object(await server.body(request, "add_point_interaction"),
                           "add_point_interaction")

        def work() -> Response:
            with lease_of(request) as lease:
                what = "add_point_interaction"
                shape = server.lesions(lease, what).shape
                point = coordinates(data.get("coordinates"), shape, what)
                positive = flag(data, "include_interaction", what)

                def add(lesions: LesionSession) -> None:
                    lesions.add_points(np.asarray([point]), positive)

                return server.interact(lease, what, add, flag(data, "run_prediction", what,
                                                              True))

        return await run_in_threadpool(work)

    @app.post(P.PATH_ADD_SCRIBBLE)
    async def add_scribble(request: Request) -> Response:
        server.authorise(request)
        what = "add_scribble_interaction"
        meta = meta_header(request.headers.get(P.META_HEADER), what)
        body = await server.body(request, what)

        def work() -> Response:
            with lease_of(request) as lease:
                lesions = server.lesions(lease, what)
                mask = unpack(body, what, (3,), "biuf", server.options.max_upload_bytes)
                bounds = meta.get("interaction_bbox")
                offset = [0, 0, 0] if bounds is None else box(bounds, lesions.shape, what)
                size = list(lesions.shape) if bounds is None else [h - lo for lo, h in bounds]
                if list(mask.shape) != size:
                    raise RequestError(f"{what}: scribble of {list(mask.shape)} voxels for a "
                                     f"box of {size}")
                positive = flag(meta, "include_interaction", what)
                voxels = scribble_voxels(mask, offset, lesions.spacing)
                if not len(voxels):
                    raise RequestError(f"{what}: the scribble has no voxel set")

                def add(lesions: LesionSession) -> None:
                    lesions.add_points(voxels, positive)

                return server.interact(lease, what, add, flag(meta, "run_prediction", what,
                                                              True))

        return await run_in_threadpool(work)

    _box_route(app, server, lease_of)
    for path, name in ((P.PATH_ADD_LASSO, "lassos"), (P.PATH_ADD_INITIAL_SEG, "initial masks")):
        app.add_api_route(path, _refuse(server, name), methods=["POST"])


def _box_route(app: FastAPI, server: Server,
               lease_of: Callable[[Request], contextlib.AbstractContextManager[Lease]]) -> None:
    """Boxes: one click at the box's hottest PET voxel (`LesionSession.add_box`)."""

    @app.post(P.PATH_ADD_BBOX)
    async def add_bbox(request: Request) -> Response:
        server.authorise(request)
        what = "add_bbox_interaction"
        data = json_object(await server.body(request, what), what)

        def work() -> Response:
            with lease_of(request) as lease:
                shape = server.lesions(lease, what).shape
                bounds = data.get("bbox_coords")
                low = box(bounds, shape, what, "bbox_coords")
                high = [h for _low, h in bounds]
                positive = flag(data, "include_interaction", what)

                def add(lesions: LesionSession) -> None:
                    lesions.add_box(low, high, positive)

                return server.interact(lease, what, add, flag(data, "run_prediction", what,
                                                              True))

        return await run_in_threadpool(work)


def _refuse(server: Server, name: str) -> Callable[[Request], Any]:
    def refuse(request: Request) -> None:
        server.authorise(request)
        raise RequestError(f"{name} are not supported by this server (see /capabilities); use "
                         "points, scribbles or boxes", 400)

    return refuse


def make_app(predictors: Predictor | Sequence[Predictor], studies: StudyIndex,
             options: ServeOptions) -> FastAPI:
    """The application: routes, one-line errors, the lease reaper; with several predictors
    (one per device) each reader's study goes to the least busy one."""
    server = Server(predictors, studies, options)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def reap() -> None:
            while True:
                await asyncio.sleep(options.sweep_interval_s)
                server.leases.sweep()

        task = asyncio.create_task(reap())
        try:
            yield
        finally:
            task.cancel()
            server.leases.clear()

    app = FastAPI(title="petseg serve", version=__version__, lifespan=lifespan)
    app.state.server = server

    def one_line(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(RequestError)
    async def bad(_request: Request, exc: RequestError) -> JSONResponse:
        return one_line(exc.status, str(exc))

    @app.exception_handler(PetsegError)
    async def petseg_error(_request: Request, exc: PetsegError) -> JSONResponse:
        return one_line(422, str(exc).splitlines()[0])

    @app.exception_handler(LeaseGoneError)
    async def gone(_request: Request, exc: LeaseGoneError) -> JSONResponse:
        return one_line(410, str(exc))

    @app.exception_handler(ServerFullError)
    async def full(_request: Request, exc: ServerFullError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "10"})

    _routes(app, server)
    return app
