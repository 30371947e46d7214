"""Exact point tracks from the simulator (the default tracker), and an optional CoTracker3 backend.

Method, per view: at a query frame, sample query pixels (a regular grid of pixel centres plus uniform random
pixels), find the body under each pixel with a segmentation render, lift the pixel to 3-D with the depth
buffer, express the point in that body's frame, move it with the body's pose through every stored state,
project it into the camera at every frame, and mark it visible when the depth buffer at its pixel agrees with
its own depth. Points can come from several query frames; each point is tracked over the whole episode.

Coordinates: everything is in the frame of the images the model sees (`orientation`, "flip_vertical" for
ZipMo/ATM), as (y, x) in [-1, 1] with the pixel-centre convention of ZIPMO_REFERENCE.md's `centers`
(pixel i of n has centre -1 + (2i + 1)/n; -1 is the top/left border, +1 the bottom/right border).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MJOBJ_GEOM = 5  # mujoco.mjtObj.mjOBJ_GEOM


@dataclass
class ViewTracks:
    """Tracks of one camera view.

    tracks: (T, N, 2) float32 (y, x) in [-1, 1]; visible: (T, N) bool; query_frame: (N,) int32;
    body: (N,) int32 MuJoCo body id the point is attached to; depth: (T, N) float32 camera depth (metres).
    """

    camera: str
    tracks: np.ndarray
    visible: np.ndarray
    query_frame: np.ndarray
    body: np.ndarray
    depth: np.ndarray
    query_yx: np.ndarray | None = None  # (N, 2) the query pixel centres, (y, x) in [-1, 1]
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8 RGB of the same renders, oriented (when kept)


# ---------------------------------------------------------------------------------------------------------
# Camera geometry
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Camera:
    """Pinhole model of a MuJoCo camera at one state: world position, rotation (columns = camera axes,
    looking along -z with +y up) and focal length in pixels for an (h, w) image."""

    pos: np.ndarray
    rot: np.ndarray
    focal: float
    height: int
    width: int


def camera_at(sim: Any, name: str, height: int, width: int) -> Camera:
    """The camera `name` in the current state of `sim` (robosuite MjSim, after `forward`)."""
    cid = sim.model.camera_name2id(name)
    fovy = float(sim.model.cam_fovy[cid])
    focal = 0.5 * height / np.tan(np.deg2rad(fovy) / 2.0)
    return Camera(
        np.array(sim.data.cam_xpos[cid]), np.array(sim.data.cam_xmat[cid]).reshape(3, 3), focal, height, width
    )


def pixel_to_world(
    cam: Camera, rows: np.ndarray, cols: np.ndarray, depth: np.ndarray, orientation: str
) -> np.ndarray:
    """Lift pixels (row, col of the oriented image, integer or continuous centre coords) at camera depth
    `depth` (distance along the viewing axis) to world points (N, 3)."""
    u, v = _to_upright(rows, cols, cam, orientation)
    x = (u - cam.width / 2.0) / cam.focal * depth
    y = -(v - cam.height / 2.0) / cam.focal * depth
    local = np.stack([x, y, -depth], axis=-1)
    return cam.pos + local @ cam.rot.T


def world_to_pixel(
    cam: Camera, points: np.ndarray, orientation: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project world points (N, 3) into the oriented image: (row, col) continuous coordinates in which pixel
    i spans [i, i+1) (centre i + 0.5), and the camera depth (N,)."""
    local = (points - cam.pos) @ cam.rot
    depth = -local[:, 2]
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    u = cam.focal * local[:, 0] / safe + cam.width / 2.0
    v = -cam.focal * local[:, 1] / safe + cam.height / 2.0
    rows, cols = _from_upright(v, u, cam, orientation)
    return rows, cols, depth


def _to_upright(
    rows: np.ndarray, cols: np.ndarray, cam: Camera, orientation: str
) -> tuple[np.ndarray, np.ndarray]:
    """Oriented-image continuous (row, col) -> upright (u = x right, v = y down) continuous coordinates."""
    if orientation == "flip_vertical":  # the oriented image is upright
        return cols, rows
    if orientation == "raw":  # rows counted from the bottom
        return cols, cam.height - rows
    if orientation == "rotate_180":
        return cam.width - cols, cam.height - rows
    raise ValueError(f"unknown orientation {orientation!r}; valid: raw, flip_vertical, rotate_180")


def _from_upright(
    v: np.ndarray, u: np.ndarray, cam: Camera, orientation: str
) -> tuple[np.ndarray, np.ndarray]:
    """Upright continuous (v, u) -> oriented-image continuous (row, col)."""
    if orientation == "flip_vertical":
        return v, u
    if orientation == "raw":
        return cam.height - v, u
    if orientation == "rotate_180":
        return cam.height - v, cam.width - u
    raise ValueError(f"unknown orientation {orientation!r}; valid: raw, flip_vertical, rotate_180")


def to_normalised(rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> np.ndarray:
    """Continuous (row, col) (pixel i spans [i, i+1)) -> (y, x) in [-1, 1] (..., 2)."""
    return np.stack([rows / height * 2.0 - 1.0, cols / width * 2.0 - 1.0], axis=-1)


def from_normalised(yx: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) in [-1, 1] -> continuous (row, col)."""
    return (yx[..., 0] + 1.0) / 2.0 * height, (yx[..., 1] + 1.0) / 2.0 * width


# ---------------------------------------------------------------------------------------------------------
# Rendering helpers (raw buffers are bottom-up; we orient them like the RGB frames)
# ---------------------------------------------------------------------------------------------------------


def _orient(buf: np.ndarray, orientation: str) -> np.ndarray:
    if orientation == "raw":
        return buf
    if orientation == "flip_vertical":
        return buf[::-1]
    return buf[::-1, ::-1]


def activate_gl(sim: Any) -> None:
    """Make `sim`'s offscreen GL context current. robosuite's render does not, so with two rendering envs in
    one process a render would otherwise use whichever context was created (or made current) last."""
    ctx = getattr(sim, "_render_context_offscreen", None)
    if ctx is not None:
        ctx.gl_ctx.make_current()


def render_depth(sim: Any, camera: str, size: int, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (H, W, 3) uint8, metric depth (H, W) float32 along the viewing axis) in `orientation`."""
    activate_gl(sim)
    rgb, depth = sim.render(width=size, height=size, camera_name=camera, depth=True)
    extent = sim.model.stat.extent
    far, near = sim.model.vis.map.zfar * extent, sim.model.vis.map.znear * extent
    metric = near / (1.0 - depth * (1.0 - near / far))
    return np.ascontiguousarray(_orient(rgb, orientation)), np.ascontiguousarray(_orient(metric, orientation))


def render_bodies(sim: Any, camera: str, size: int, orientation: str) -> np.ndarray:
    """Body id under every pixel (H, W) int32 from a segmentation render (-1 where no geom)."""
    activate_gl(sim)
    seg = sim.render(width=size, height=size, camera_name=camera, segmentation=True)
    seg = _orient(seg, orientation)
    body = np.full(seg.shape[:2], -1, dtype=np.int32)
    is_geom = seg[..., 0] == MJOBJ_GEOM
    body[is_geom] = sim.model.geom_bodyid[seg[..., 1][is_geom]]
    return body


# ---------------------------------------------------------------------------------------------------------
# Query sampling and tracking
# ---------------------------------------------------------------------------------------------------------


def sample_queries(
    size: int, grid: int, n_random: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Query pixels (integer row, col): a `grid` x `grid` lattice of pixel centres spread over the image
    plus `n_random` uniformly drawn pixels."""
    idx = ((np.arange(grid) + 0.5) * size / grid).astype(np.int64)
    gr, gc = np.meshgrid(idx, idx, indexing="ij")
    rr = rng.integers(0, size, n_random)
    rc = rng.integers(0, size, n_random)
    return np.concatenate([gr.ravel(), rr]), np.concatenate([gc.ravel(), rc])


def _set_state(env: Any, state: np.ndarray) -> Any:
    sim = env.raw.env.sim
    sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
    sim.forward()
    return sim


def _body_poses(sim: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.array(sim.data.xpos), np.array(sim.data.xmat).reshape(-1, 3, 3)


@dataclass
class Capture:
    """Everything the exact tracker needs from a state sequence, from ONE render pass per frame and camera.

    rgb[cam]: (T, H, W, 3) uint8 and depth[cam]: (T, H, W) float32 metric depth, both in raw robosuite
    orientation (the same call renders both); bodies[cam][q]: (H, W) int32 body id under each pixel at query
    frame q (raw orientation); xpos (T, B, 3), xmat (T, B, 3, 3): body poses; cam_pos[cam] (T, 3),
    cam_rot[cam] (T, 3, 3), focal[cam]: the camera at every frame (the wrist camera moves).
    """

    size: int
    rgb: dict[str, np.ndarray]
    depth: dict[str, np.ndarray]
    bodies: dict[str, dict[int, np.ndarray]]
    xpos: np.ndarray
    xmat: np.ndarray
    cam_pos: dict[str, np.ndarray]
    cam_rot: dict[str, np.ndarray]
    focal: dict[str, float]

    @property
    def length(self) -> int:
        return int(self.xpos.shape[0])

    def camera(self, name: str, t: int) -> Camera:
        return Camera(self.cam_pos[name][t], self.cam_rot[name][t], self.focal[name], self.size, self.size)


def capture_states(
    sim: Any,
    states: np.ndarray,
    cameras: tuple[str, ...],
    size: int,
    query_frames: tuple[int, ...] = (0,),
    progress: Any = None,
) -> Capture:
    """Set each flattened state (T, D) in `sim` (a robosuite MjSim with an offscreen context) and render
    RGB + depth of every camera (one render call each), a segmentation render at the query frames, and the
    body and camera poses. The renders are the ones robosuite's camera observations give at that state.
    `progress.update(1)` is called per frame."""
    activate_gl(sim)
    t_total = len(states)
    extent = sim.model.stat.extent
    far, near = sim.model.vis.map.zfar * extent, sim.model.vis.map.znear * extent
    queries = set(int(q) for q in query_frames)
    rgb = {c: np.zeros((t_total, size, size, 3), np.uint8) for c in cameras}
    depth = {c: np.zeros((t_total, size, size), np.float32) for c in cameras}
    bodies: dict[str, dict[int, np.ndarray]] = {c: {} for c in cameras}
    n_body = sim.model.nbody
    xpos = np.zeros((t_total, n_body, 3))
    xmat = np.zeros((t_total, n_body, 3, 3))
    cam_pos = {c: np.zeros((t_total, 3)) for c in cameras}
    cam_rot = {c: np.zeros((t_total, 3, 3)) for c in cameras}
    focal: dict[str, float] = {}
    for t, state in enumerate(states):
        sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
        sim.forward()
        xpos[t], xmat[t] = _body_poses(sim)
        for cam in cameras:
            geom = camera_at(sim, cam, size, size)
            cam_pos[cam][t], cam_rot[cam][t], focal[cam] = geom.pos, geom.rot, geom.focal
            image, buf = sim.render(width=size, height=size, camera_name=cam, depth=True)
            rgb[cam][t] = image
            depth[cam][t] = near / (1.0 - buf * (1.0 - near / far))
            if t in queries:
                bodies[cam][t] = render_bodies(sim, cam, size, "raw")
        if progress is not None:
            progress.update(1)
    return Capture(size, rgb, depth, bodies, xpos, xmat, cam_pos, cam_rot, focal)


def tracks_from_capture(
    cap: Capture,
    camera: str,
    orientation: str = "flip_vertical",
    query_frames: tuple[int, ...] = (0,),
    grid: int = 16,
    n_random: int = 64,
    rng: np.random.Generator | None = None,
    depth_tolerance: float = 0.01,
    keep_frames: bool = False,
) -> ViewTracks:
    """Exact tracks of one view from a `Capture` (numpy only, no simulator).

    Per query frame: `grid`² + `n_random` query pixels; pixels on no geometry (background) are dropped.
    Visibility: in the image and |rendered depth - point depth| < `depth_tolerance` + 2 % of the depth.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    size, t_total = cap.size, cap.length
    query_frames = tuple(sorted({min(max(int(q), 0), t_total - 1) for q in query_frames}))
    bodies, local_points, qframes, queries_yx = [], [], [], []
    for q in query_frames:
        depth = _orient(cap.depth[camera][q], orientation)
        body_map = _orient(cap.bodies[camera][q], orientation)
        rows, cols = sample_queries(size, grid, n_random, rng)
        body = body_map[rows, cols]
        keep = body >= 0
        rows, cols, body = rows[keep], cols[keep], body[keep]
        cam = cap.camera(camera, q)
        world = pixel_to_world(cam, rows + 0.5, cols + 0.5, depth[rows, cols].astype(np.float64), orientation)
        xpos, xmat = cap.xpos[q], cap.xmat[q]
        local = np.einsum("nji,nj->ni", xmat[body], world - xpos[body])  # R^T (p - x)
        bodies.append(body)
        local_points.append(local)
        qframes.append(np.full(len(body), q, dtype=np.int32))
        queries_yx.append(to_normalised(rows + 0.5, cols + 0.5, size, size))
    body = np.concatenate(bodies)
    local = np.concatenate(local_points)
    n = len(body)
    tracks = np.zeros((t_total, n, 2), dtype=np.float32)
    visible = np.zeros((t_total, n), dtype=bool)
    depths = np.zeros((t_total, n), dtype=np.float32)
    for t in range(t_total):
        world = cap.xpos[t][body] + np.einsum("nij,nj->ni", cap.xmat[t][body], local)
        rows, cols, d = world_to_pixel(cap.camera(camera, t), world, orientation)
        tracks[t] = to_normalised(rows, cols, size, size)
        depths[t] = d
        depth = _orient(cap.depth[camera][t], orientation)
        ri, ci = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
        inside = (ri >= 0) & (ri < size) & (ci >= 0) & (ci < size) & (d > 0)
        seen = np.zeros(n, dtype=bool)
        seen[inside] = np.abs(depth[ri[inside], ci[inside]] - d[inside]) < depth_tolerance + 0.02 * d[inside]
        visible[t] = seen
    frames = None
    if keep_frames:
        frames = np.ascontiguousarray(_orient_frames(cap.rgb[camera], orientation))
    query_yx = np.concatenate(queries_yx).astype(np.float32)
    return ViewTracks(
        camera, tracks, visible, np.concatenate(qframes), body.astype(np.int32), depths, query_yx, frames
    )


def _orient_frames(frames: np.ndarray, orientation: str) -> np.ndarray:
    """`_orient` for a stack (T, H, W, ...)."""
    if orientation == "raw":
        return frames
    if orientation == "flip_vertical":
        return frames[:, ::-1]
    return frames[:, ::-1, ::-1]


def track_view(
    env: Any,
    states: np.ndarray,
    camera: str,
    size: int = 128,
    orientation: str = "flip_vertical",
    query_frames: tuple[int, ...] = (0,),
    grid: int = 16,
    n_random: int = 64,
    rng: np.random.Generator | None = None,
    depth_tolerance: float = 0.01,
    keep_frames: bool = False,
) -> ViewTracks:
    """Exact tracks of one view over a state sequence (T, D) in a rendering `LiberoEnv` (see
    `tracks_from_capture`); renders every state once (`capture_states`)."""
    t_total = len(states)
    query_frames = tuple(sorted({min(max(int(q), 0), t_total - 1) for q in query_frames}))
    cap = capture_states(env.raw.env.sim, states, (camera,), size, query_frames)
    return tracks_from_capture(
        cap, camera, orientation, query_frames, grid, n_random, rng, depth_tolerance, keep_frames
    )


def track_demo(
    env: Any,
    states: np.ndarray,
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand"),
    size: int = 128,
    orientation: str = "flip_vertical",
    query_every: int = 16,
    grid: int = 16,
    n_random: int = 64,
    seed: int = 0,
    keep_frames: bool = False,
    progress: Any = None,
) -> dict[str, ViewTracks]:
    """Tracks of every view for a demo, from one render pass over its states in `env` (a rendering
    `LiberoEnv`): queries every `query_every` frames (0, 16, 32, ...) so every training window starts near a
    query frame with enough visible points."""
    queries = query_frame_list(len(states), query_every)
    cap = capture_states(env.raw.env.sim, states, tuple(cameras), size, queries, progress)
    return tracks_of_capture(cap, tuple(cameras), orientation, query_every, grid, n_random, seed, keep_frames)


def query_frame_list(length: int, query_every: int) -> tuple[int, ...]:
    """The query frames of a `length`-frame demo: 0, K, 2K, ..."""
    return tuple(range(0, length, max(1, query_every)))


def tracks_of_capture(
    cap: Capture,
    cameras: tuple[str, ...],
    orientation: str = "flip_vertical",
    query_every: int = 16,
    grid: int = 16,
    n_random: int = 64,
    seed: int = 0,
    keep_frames: bool = False,
) -> dict[str, ViewTracks]:
    """`track_demo` from an existing capture (e.g. the one made while collecting the demo)."""
    rng = np.random.default_rng(seed)
    queries = query_frame_list(cap.length, query_every)
    return {
        cam: tracks_from_capture(cap, cam, orientation, queries, grid, n_random, rng, keep_frames=keep_frames)
        for cam in cameras
    }


# ---------------------------------------------------------------------------------------------------------
# Optional CoTracker3 backend (from a local checkout)
# ---------------------------------------------------------------------------------------------------------


def cotracker_view(
    frames: np.ndarray,
    checkpoint: str,
    repo: str,
    query_rows: np.ndarray,
    query_cols: np.ndarray,
    query_frame: int = 0,
    device: str = "cpu",
) -> ViewTracks:
    """Track query pixels through oriented frames (T, H, W, 3) uint8 with CoTracker3 (offline model) loaded
    from a local checkout `repo` and weights `checkpoint`; same output format as the simulator tracker
    (body = -1, depth = NaN: unknown to an image tracker)."""
    import sys

    import torch

    from zipmo_robot.errors import UserError

    if repo not in sys.path:
        sys.path.insert(0, repo)
    try:
        from cotracker.predictor import CoTrackerPredictor
    except ImportError as exc:
        raise UserError(
            f"cannot import cotracker from {repo!r} ({exc}); pass --cotracker-repo to a CoTracker checkout"
        ) from exc
    model = CoTrackerPredictor(checkpoint=checkpoint).to(device)
    t, h, w, _ = frames.shape
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float().to(device)
    # CoTracker queries are (t, x, y) with pixel centres at integer coordinates.
    queries = torch.tensor(
        np.stack([np.full(len(query_rows), query_frame), query_cols, query_rows], 1), dtype=torch.float32
    )[None].to(device)
    with torch.no_grad():
        pred, vis = model(video, queries=queries)
    xy = pred[0].cpu().numpy()  # (T, N, 2) x, y with integer pixel centres
    tracks = to_normalised(xy[..., 1] + 0.5, xy[..., 0] + 0.5, h, w).astype(np.float32)
    n = len(query_rows)
    return ViewTracks(
        "",
        tracks,
        vis[0].cpu().numpy().astype(bool),
        np.full(n, query_frame, np.int32),
        np.full(n, -1, np.int32),
        np.full((t, n), np.nan, np.float32),
        to_normalised(query_rows + 0.5, query_cols + 0.5, h, w).astype(np.float32),
    )
