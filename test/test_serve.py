"""`petseg serve` against nninteractive-client's own session, in the call order of 3D Slicer's
SlicerNNInteractive: the masks equal `petseg predict` with the same clicks; leases, keys,
capacity and bad payloads answered with one line, the server going on."""

from __future__ import annotations

import importlib.metadata
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient
from nnInteractive.inference.remote import (
    ServerAtCapacityError,
    SessionExpiredError,
    nnInteractiveRemoteInferenceSession,
)
from nnInteractive.inference.remote.serialization import pack_array, unpack_array
from serve_fixtures import KEY, config, dice, predicted, server, study, weights
from test_layout import import_graph

from petseg.config import InferenceConfig
from petseg.inference.predictor import Predictor
from petseg.serve.app import ServeOptions, make_app
from petseg.serve.lesions import changed_bounds, changed_part, scribble_voxels
from petseg.serve.studies import ORIENTATIONS, StudyIndex
from petseg.serve.wire import pack_answer

__all__ = ["config", "server", "study", "weights"]  # fixtures used by name


def test_the_client_version_is_in_the_supported_range() -> None:
    major, minor, patch = (int(v) for v in
                           importlib.metadata.version("nninteractive-client").split(".")[:3])
    assert (2, 5, 1) <= (major, minor, patch) < (2, 7, 0)


@pytest.mark.slow
def test_slicer_call_order_gives_the_masks_of_predict(tmp_path, server, study, weights,
                                                      config) -> None:
    """claim, capabilities, autozoom, set_image [1, k, j, i] with the spacing reversed,
    target buffer, reset, points at reversed (i, j, k) indices, a scribble, undo, release."""
    _cases, pet, _ct = study
    session = nnInteractiveRemoteInferenceSession(server, api_key=KEY)
    assert session.supported_interactions == {"points": True, "scribble": True,
                                              "bbox2d": True, "bbox3d": True, "lasso": False}
    assert session.supports_undo and not session.supports_initial_label
    session.set_do_autozoom(True)
    image = sitk.GetArrayFromImage(pet)  # Slicer's arrayFromVolume: [k, j, i]
    session.set_image(np.ascontiguousarray(image[None]),
                      {"spacing": list(reversed(pet.GetSpacing()))})
    assert session.original_image_shape == (1, 24, 30, 30)
    buffer = np.zeros(image.shape, np.uint8)
    session.set_target_buffer(buffer)
    session.reset_interactions()
    # a tumour click on the hot spot, (i, j, k) = (6, 21, 5), sent reversed as Slicer does
    tumour_ijk = (6, 21, 5)
    session.add_point_interaction(tumour_ijk[::-1], include_interaction=True)
    assert buffer[5, 21, 6] == 1 and buffer.sum() > 0  # every lesion, not just the box
    # a background click on a masked voxel far from the tumour click
    masked = np.argwhere(buffer)
    far = masked[np.argmax(np.abs(masked - [5, 21, 6]).sum(axis=1))]
    background_ijk = tuple(int(v) for v in far[::-1])
    bbox = session.add_point_interaction(tuple(int(v) for v in far), include_interaction=False)
    assert buffer[tuple(far)] == 0 and bbox is not None
    after_points = buffer.copy()
    # a positive scribble: a crop of three voxels along i on slice k = 12
    scribble = np.ones((1, 1, 3), np.uint8)
    session.add_scribble_interaction(scribble, include_interaction=True,
                                     interaction_bbox=[[12, 13], [15, 16], [14, 17]])
    headers = {"Authorization": f"Bearer {KEY}", "X-Lease-Token": session._lease_token}
    clicks = httpx.get(server + "/petseg/clicks", headers=headers).json()["points"]
    assert clicks == [{"point": list(tumour_ijk), "name": "tumor"},
                      *({"point": [i, 15, 12], "name": "tumor"} for i in (14, 15, 16)),
                      {"point": list(background_ijk), "name": "background"}]
    with_scribble = predicted(tmp_path / "scribble", study, weights, config, clicks)
    assert dice(buffer, with_scribble) >= 0.999
    assert session.undo() is True
    np.testing.assert_array_equal(buffer, after_points)
    points_only = predicted(tmp_path / "points", study, weights, config,
                            [c for c in clicks if c["point"][1:] != [15, 12]])
    assert dice(buffer, points_only) >= 0.999
    # the session replaces the probability within UPDATE_MM of a click, measured for the
    # bundled network; this scaled random network's clicks reach a little past it
    assert int((buffer != points_only).sum()) <= 2
    session.close()  # release
    gone = httpx.get(server + "/lease_status", headers=headers)
    assert gone.status_code == 410
    assert gone.json() == {"detail": "lease expired or unknown; reconnect"}


@pytest.mark.slow
def test_a_box_is_a_click_at_its_hottest_voxel(tmp_path, server, study, weights,
                                               config) -> None:
    """A positive 2D box around the hot spot (Slicer's [k, j, i] order) gives the mask of a
    tumour click at the box's hottest PET voxel; after undo, a negative box there gives the
    mask of a background click at that voxel."""
    _cases, pet, _ct = study
    session = nnInteractiveRemoteInferenceSession(server, api_key=KEY)
    image = sitk.GetArrayFromImage(pet)
    session.set_image(np.ascontiguousarray(image[None]),
                      {"spacing": list(reversed(pet.GetSpacing()))})
    buffer = np.zeros(image.shape, np.uint8)
    session.set_target_buffer(buffer)
    bounds = [[5, 6], [17, 25], [2, 10]]  # slice k = 5, j 17-24, i 2-9
    inside = image[5, 17:25, 2:10]
    j, i = np.unravel_index(int(np.argmax(inside)), inside.shape)
    hottest = [int(2 + i), int(17 + j), 5]  # (i, j, k): PET (x, y, z)
    assert session.add_bbox_interaction(bounds, include_interaction=True) is not None
    headers = {"Authorization": f"Bearer {KEY}", "X-Lease-Token": session._lease_token}
    clicks = httpx.get(server + "/petseg/clicks", headers=headers).json()["points"]
    assert clicks == [{"point": hottest, "name": "tumor"}]
    expected = predicted(tmp_path / "box", study, weights, config, clicks)
    assert buffer[5, hottest[1], hottest[0]] == 1
    assert dice(buffer, expected) >= 0.999
    assert session.undo() is True
    session.add_bbox_interaction(bounds, include_interaction=False)
    clicks = httpx.get(server + "/petseg/clicks", headers=headers).json()["points"]
    assert clicks == [{"point": hottest, "name": "background"}]
    assert dice(buffer, predicted(tmp_path / "negative", study, weights, config, clicks)) \
        >= 0.999
    session.close()


def test_key_and_capacity(server) -> None:
    claim = httpx.post(server + "/claim")
    assert claim.status_code == 401
    assert claim.json()["detail"] == "missing or wrong API key (Authorization: Bearer ...)"
    with pytest.raises(httpx.HTTPStatusError, match="401"):
        nnInteractiveRemoteInferenceSession(server, api_key="wrong")
    assert httpx.get(server + "/healthz").json() == {"ok": True}  # no key needed
    first = nnInteractiveRemoteInferenceSession(server, api_key=KEY)
    try:
        with pytest.raises(ServerAtCapacityError, match=r"at capacity \(1 session"):
            nnInteractiveRemoteInferenceSession(server, api_key=KEY)
        httpx.post(server + "/release", headers={"Authorization": f"Bearer {KEY}",
                                                 "X-Lease-Token": first._lease_token})
        with pytest.raises(SessionExpiredError, match="lease expired or unknown"):
            first.lease_status()
    finally:
        first.close()
    nnInteractiveRemoteInferenceSession(server, api_key=KEY).close()  # the slot is free again


@pytest.fixture(scope="module")
def app(study, weights, config) -> Iterator[TestClient]:
    """The application in this process: two sessions at most, small uploads, a short idle
    timeout."""
    predictor = Predictor.from_weights_dir(weights, InferenceConfig(roi_size=(32, 32, 32),
                                                                    mode="fast"), device="cpu")
    options = ServeOptions(max_sessions=2, idle_timeout_s=600, max_upload_bytes=400_000)
    with TestClient(make_app(predictor, StudyIndex(study[0]), options)) as client:
        yield client


def claim(client: TestClient) -> dict[str, str]:
    response = client.post("/claim")
    assert response.status_code == 200
    return {"X-Lease-Token": response.json()["lease_token"]}


def upload(client: TestClient, lease: dict[str, str], array: np.ndarray,
           spacing: list[float] | None = None) -> httpx.Response:
    meta = {"image_properties": {"spacing": spacing} if spacing else {}}
    return client.post("/set_image", content=pack_array(array),
                       headers={**lease, "X-Meta": json.dumps(meta)})


def detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["detail"]


def test_bad_payloads_are_one_line_and_the_server_goes_on(app, study) -> None:
    _cases, pet, ct = study
    lease = claim(app)
    image = sitk.GetArrayFromImage(pet)[None]
    good = pack_array(image)
    assert detail(app.post("/set_image", content=b"XXXX" + good[4:], headers=lease), 400) \
        == "set_image: bad magic b'XXXX'; send an array packed by nninteractive-client"
    assert detail(app.post("/set_image", content=good[:4] + b"\x07" + good[5:],
                           headers=lease), 400) == \
        "set_image: wire version 7; this server reads version 1"
    assert detail(upload(app, lease, np.zeros((1, 1, 1, 5000), np.uint8)), 400) == \
        "set_image: shape [1, 1, 1, 5000] out of range (1 to 4096 a side)"
    assert detail(upload(app, lease, np.zeros((1, 80, 80, 80), np.float32)), 413) == \
        "set_image: 2048000 bytes unpacked, over the server's limit of 400000"
    assert detail(upload(app, lease, image.astype(np.complex64)), 400) == \
        "set_image: dtype complex64 not accepted here"
    assert detail(app.post("/set_image", content=b"\0" * 500_000, headers=lease), 413) == \
        "set_image: body of 500000 bytes over the server's limit of 400000"
    noise = np.random.default_rng(0).random(image.shape, np.float32)
    assert detail(upload(app, lease, noise), 422).startswith(
        "set_image: the uploaded volume (24x30x30 voxels) is no PET of the server's studies: "
        "load the PET (SUV) of one of study-1 (24x30x30)")
    ct_image = sitk.GetArrayFromImage(ct)[None].astype(np.float32)
    assert detail(upload(app, lease, ct_image), 422) == (
        "set_image: the uploaded volume is the CT of study study-1; load its PET (SUV) "
        "volume as the source image")
    assert detail(app.post("/add_point_interaction", json={"coordinates": [1, 2, 3],
                                                           "include_interaction": True},
                           headers=lease), 409) == \
        "add_point_interaction: no image yet; call set_image first"
    assert detail(upload(app, lease, image, [6.0, 0.0, 4.0]), 400) == \
        "set_image: image_properties.spacing must be three non-zero mm"
    assert upload(app, lease, image, [6.0, 4.0, 4.0]).status_code == 200
    # napari-nifti's signed scale: the sign (a flipped axis) is dropped, the study matches
    assert upload(app, lease, image, [-6.0, -4.0, 4.0]).json()["study"] == "study-1"
    assert detail(app.post("/set_target_buffer", json={"shape": [3, 3, 3], "dtype": "uint8"},
                           headers=lease), 400).startswith("set_target_buffer: shape [3, 3, 3]")
    assert app.post("/set_target_buffer", json={"shape": [24, 30, 30], "dtype": "uint8"},
                    headers=lease).status_code == 200
    point = "/add_point_interaction"
    assert detail(app.post(point, json={"coordinates": [24, 0, 0], "include_interaction": True},
                           headers=lease), 400) == \
        "add_point_interaction: coordinates [24, 0, 0] outside the image of [24, 30, 30] voxels"
    assert detail(app.post(point, json={"coordinates": [1, 2], "include_interaction": True},
                           headers=lease), 400) == \
        "add_point_interaction: coordinates must be three numbers (voxel indices)"
    assert detail(app.post(point, json={"coordinates": [1, 2, 3]}, headers=lease), 400) == \
        "add_point_interaction: include_interaction must be true or false"
    assert detail(app.post(point, content=b"[1, 2, 3]", headers=lease), 400) == \
        "add_point_interaction: the body must be a JSON object"
    assert detail(app.post(point, content=b"{nope", headers=lease), 400).startswith(
        "add_point_interaction: the body is no JSON")
    scribble = {**lease, "X-Meta": json.dumps({"include_interaction": True,
                                               "interaction_bbox": [[0, 1], [0, 2], [0, 40]]})}
    assert detail(app.post("/add_scribble_interaction",
                           content=pack_array(np.ones((1, 2, 40), np.uint8)), headers=scribble),
                  400).startswith("add_scribble_interaction: interaction_bbox [[0, 1], [0, 2]")
    assert detail(app.post("/add_bbox_interaction", json={}, headers=lease), 400) == \
        "add_bbox_interaction: bbox_coords must be [[low, high]] * 3 integers"
    assert detail(app.post("/add_bbox_interaction", headers=lease, json={
        "bbox_coords": [[0, 1], [0, 2], [0, 40]], "include_interaction": True}), 400) == \
        "add_bbox_interaction: bbox_coords [[0, 1], [0, 2], [0, 40]] outside the image of " \
        "[24, 30, 30] voxels"
    assert detail(app.post("/add_lasso_interaction", json={}, headers=lease), 400) == \
        "lassos are not supported by this server (see /capabilities); use points, scribbles " \
        "or boxes"
    assert app.get("/healthz").json() == {"ok": True}
    app.post("/release", headers=lease)


def test_a_lease_touches_only_its_own_session_and_expires(app, study) -> None:
    _cases, pet, ct = study
    first, second = claim(app), claim(app)
    assert detail(app.post("/claim"), 503).startswith("server is at capacity (2 session(s))")
    image = sitk.GetArrayFromImage(pet)
    both = np.stack([image, sitk.GetArrayFromImage(ct).astype(np.float32)])
    assert upload(app, first, image[None], [6.0, 4.0, 4.0]).json()["study"] == "study-1"
    assert upload(app, second, both, [6.0, 4.0, 4.0]).json()["study"] == "upload"
    for lease in (first, second):
        app.post("/set_target_buffer", json={"shape": [24, 30, 30], "dtype": "uint8"},
                 headers=lease)
    response = app.post("/add_point_interaction", headers=first, json={
        "coordinates": [5, 21, 6], "include_interaction": True, "run_prediction": False})
    assert json.loads(response.headers["X-Meta"]) == {"ran_prediction": False, "bbox": None}
    assert [p["point"] for p in app.get("/petseg/clicks", headers=first).json()["points"]] \
        == [[6, 21, 5]]
    assert app.get("/petseg/clicks", headers=second).json()["points"] == []
    assert detail(app.get("/petseg/clicks", headers={"X-Lease-Token": "f" * 32}), 410) == \
        "lease expired or unknown; reconnect"
    leases = app.app.state.server.leases
    leases.idle_timeout_s = 0.0  # every lease idle now
    time.sleep(0.01)
    assert leases.sweep() == 2
    leases.idle_timeout_s = 600.0
    assert detail(app.post("/undo", headers=first), 410) == "lease expired or unknown; reconnect"
    assert claim(app)  # the slots are free again


def test_any_axis_order_maps_voxels_both_ways() -> None:
    """`to_upload` and `pet_index` agree for each of the 48 axis orders."""
    rng = np.random.default_rng(1)
    zyx = rng.random((3, 4, 5))
    for orientation in ORIENTATIONS:
        shown = orientation.to_upload(zyx)
        np.testing.assert_array_equal(orientation.from_upload(shown), zyx)
        for index in ((0, 0, 0), tuple(s - 1 for s in shown.shape), (1, 2, 0)):
            x, y, z = orientation.pet_index(index, shown.shape)
            assert shown[index] == zyx[z, y, x]


def test_a_transposed_upload_finds_its_study_and_axes(study) -> None:
    """napari may hold the array as [x, y, z]: the study and the axis order are found."""
    cases, pet, _ct = study
    index = StudyIndex(cases)
    xyz = np.transpose(sitk.GetArrayFromImage(pet))[None]
    found = index.match(np.ascontiguousarray(xyz), list(pet.GetSpacing()))
    assert found.name == "study-1" and found.orientation.axes == (2, 1, 0)
    assert found.orientation.flips == (False, False, False)
    assert found.orientation.pet_index((6, 21, 5), xyz.shape[1:]) == (6, 21, 5)
    # a viewer without the file's geometry sends 1 mm: shape and content still decide
    unit = index.match(np.ascontiguousarray(xyz), [1.0, 1.0, 1.0])
    assert unit.name == "study-1" and unit.orientation == found.orientation


def test_nothing_but_its_command_imports_the_server() -> None:
    users = {name for name, targets in import_graph().items()
             if not name.startswith("petseg.serve")
             and any(t.startswith("petseg.serve") for t in targets)}
    assert users == {"petseg.commands.serve"}


@pytest.mark.slow
def test_undo_runs_no_network_and_gives_back_the_mask_before(app, study) -> None:
    """Two clicks, then undo: the mask of the first click again, the network not run."""
    _cases, pet, _ct = study
    lease = claim(app)
    assert upload(app, lease, sitk.GetArrayFromImage(pet)[None], [6.0, 4.0, 4.0]).status_code \
        == 200
    app.post("/set_target_buffer", json={"shape": [24, 30, 30], "dtype": "uint8"},
             headers=lease)
    lesions = app.app.state.server.leases.peek(lease["X-Lease-Token"]).lesions
    masks = []
    for coordinates, positive in (([5, 21, 6], True), ([12, 10, 20], True)):
        app.post("/add_point_interaction", headers=lease, json={
            "coordinates": coordinates, "include_interaction": positive})
        assert lesions.session.updated_voxels > 0  # the network ran around the click
        masks.append(lesions.viewer.copy())
    assert not np.array_equal(*masks)
    response = app.post("/undo", headers=lease)
    assert json.loads(response.headers["X-Meta"])["ran_prediction"] is True
    assert lesions.session.updated_voxels == 0
    np.testing.assert_array_equal(lesions.viewer, masks[0])
    app.post("/release", headers=lease)


def test_the_changed_box_and_the_scribble_cells() -> None:
    rng = np.random.default_rng(2)
    before = np.zeros((5, 6, 7), np.uint8)
    assert changed_bounds(before, before) is None
    for _ in range(50):
        after = before.copy()
        after[tuple(rng.integers(0, s, 3) for s in before.shape)] = 1
        found = np.argwhere(after)
        assert changed_bounds(before, after) == [[int(found[:, a].min()),
                                                  int(found[:, a].max()) + 1] for a in range(3)]
    # a 1 x 1 x 9 stroke at 1 mm voxels keeps one voxel per 4 mm cell, first in each
    stroke = np.ones((1, 1, 9), np.uint8)
    kept = scribble_voxels(stroke, [2, 3, 1], np.array([1.0, 1.0, 1.0]))
    assert kept.tolist() == [[2, 3, 1], [2, 3, 4], [2, 3, 8]]


def test_devices_spread_the_readers_and_answer_alike(study, weights) -> None:
    """Two ensembles (two devices; CPU twice here): the second reader's study goes to the
    idle one, a released reader frees its device, and both devices answer a click alike."""
    _cases, pet, _ct = study
    config = InferenceConfig(roi_size=(32, 32, 32), mode="fast")
    predictors = [Predictor.from_weights_dir(weights, config, device="cpu") for _ in range(2)]
    options = ServeOptions(max_sessions=3, idle_timeout_s=600, max_upload_bytes=400_000)
    app = make_app(predictors, StudyIndex(study[0]), options)
    server = app.state.server
    image = sitk.GetArrayFromImage(pet)[None]
    peak = [int(v) for v in np.unravel_index(int(np.argmax(image[0])), image.shape[1:])]
    with TestClient(app) as client:
        leases = [claim(client) for _ in range(3)]
        served, answers = [], []
        for lease in leases[:2]:
            assert upload(client, lease, image).status_code == 200
            served.append(server.leases.peek(lease["X-Lease-Token"]).lesions.session.predictor)
            assert client.post("/set_target_buffer", headers=lease, json={
                "shape": list(image.shape[1:]), "dtype": "uint8"}).status_code == 200
            answer = client.post("/add_point_interaction", headers=lease, json={
                "coordinates": peak, "include_interaction": True, "run_prediction": True})
            assert answer.status_code == 200, answer.text
            answers.append(answer.content)
        assert served[0] is predictors[0] and served[1] is predictors[1]
        assert answers[0] == answers[1]
        client.post("/release", headers=leases[0])
        assert upload(client, leases[2], image).status_code == 200
        third = server.leases.peek(leases[2]["X-Lease-Token"]).lesions.session.predictor
        assert third is predictors[0]  # the released reader's device is the idle one


def test_an_answer_owns_its_memory() -> None:
    """The changed part is sent after the mask it was cut from is freed: a copy, even where
    the box is a contiguous slab whose view would share the mask's memory."""
    viewer = np.zeros((4, 5, 6), np.uint8)
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3] = 1  # whole rows: mask[1:3, 0:5, 0:6] is a contiguous view
    box, part = changed_part(viewer, mask)
    assert box == [[1, 3], [0, 5], [0, 6]]
    assert not np.shares_memory(part, mask) and part.flags.owndata
    np.testing.assert_array_equal(viewer, mask)
    assert changed_part(viewer, mask) is None


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 3), (2, 3, 5), (7, 1, 40)])
def test_a_packed_answer_unpacks_as_the_client_does(shape) -> None:
    part = (np.random.default_rng(len(shape)).random(shape) > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(unpack_array(pack_answer(part)), part)
