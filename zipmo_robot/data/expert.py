"""Scripted pick-and-place expert that reads privileged simulator state (object poses, the gripper site).

It drives robosuite's OSC_POSE controller with 7-D delta actions (LIBERO's action space): a waypoint state
machine approach -> descend -> close -> lift -> carry -> lower -> open -> retreat. Used to collect
demonstrations (`zipmo-robot collect`) and as the `--policy scripted` rollout policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# OSC_POSE scaling of LIBERO's controller config: an action of 1 moves the goal 5 cm / 0.5 rad.
POS_SCALE = 0.05
ROT_SCALE = 0.5
MAX_SPAN = 0.07  # widest object extent a top grasp spans (the Panda opens to 8 cm)
HOUSING_HEIGHT = 0.07  # height of the hand housing's underside above the grip site (metres, approx.)
# Gripper pointing down with the fingers opening along world y (the Panda's home orientation in LIBERO).
DOWN_ORIENTATION = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


@dataclass(frozen=True)
class GraspSpec:
    """Where to grasp an object, relative to its body origin (world-aligned offsets, metres).

    `side_offset`: horizontal distance from the origin to the grasp point, taken along +-y so the fingers
    straddle a wall (bowls: the rim); 0 grasps the centre. `height`: grip-site height above the origin.
    `yaw`: extra rotation of the gripper about the vertical axis (radians).
    """

    side_offset: float = 0.0
    height: float = 0.03
    yaw: float = 0.0
    centre_offset: tuple[float, float] = (0.0, 0.0)  # world xy offset of the grasp centre from the origin
    # top grasps: the object's horizontal (short, long) sides, so the yaw may turn off the short axis
    # (`PickPlaceExpert._top_yaw`) while the fingers still span it
    sides: tuple[float, float] | None = None


def grasp_spec_for(name: str, env: Any) -> GraspSpec:
    """Pick a grasp for the object `name` (instance name like `akita_black_bowl_1`) from its geometry."""
    if "bowl" in name:
        return GraspSpec(side_offset=_rim_radius(env, name) - 0.002, height=0.036)
    if "plate" in name:
        return GraspSpec(side_offset=_rim_radius(env, name) - 0.004, height=0.012)
    return _top_grasp(env, name)


def _top_grasp(env: Any, name: str) -> GraspSpec:
    """Top-down grasp of a compact object: fingers across its narrower horizontal side, the grip site 3.5 cm
    below its top (at least 1.5 cm above its bottom)."""
    lo, hi, axes = _body_frame_extent(env, name)
    origin = np.array(env.sim.data.body_xpos[env.obj_body_id[name]])
    size = hi - lo
    short = axes[:, 0] if size[0] <= size[1] else axes[:, 1]
    direction = short[:2] / max(np.linalg.norm(short[:2]), 1e-9)
    yaw = float(np.arctan2(-direction[0], direction[1]))
    corners = _box_corners(lo, hi) @ axes.T + origin
    bottom, top = corners[:, 2].min(), corners[:, 2].max()
    grip_z = max(bottom + 0.015, top - 0.035)
    centre = corners.mean(axis=0)
    return GraspSpec(
        side_offset=0.0,
        height=float(grip_z - origin[2]),
        yaw=yaw,
        centre_offset=(float(centre[0] - origin[0]), float(centre[1] - origin[1])),
        sides=(float(min(size[0], size[1])), float(max(size[0], size[1]))),
    )


def _world_z_range(env: Any, name: str) -> tuple[float, float]:
    """Lowest and highest world z of an object's collision geoms (its bounding box corners)."""
    lo, hi, rot = _body_frame_extent(env, name)
    origin = np.array(env.sim.data.body_xpos[env.obj_body_id[name]])
    z = (_box_corners(lo, hi) @ rot.T + origin)[:, 2]
    return float(z.min()), float(z.max())


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    signs = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
    return lo + signs * (hi - lo)


def _body_frame_extent(env: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axis-aligned box (lo, hi) of the object's collision geoms in its body frame, and the body's rotation."""
    model, data = env.sim.model, env.sim.data
    body = env.obj_body_id[name]
    origin, rot = np.array(data.body_xpos[body]), np.array(data.body_xmat[body]).reshape(3, 3)
    aabb = np.asarray(
        getattr(model, "geom_aabb", None) if hasattr(model, "geom_aabb") else model._model.geom_aabb
    )
    points = []
    for g in _collision_geoms(env, name) or [g for g in range(model.ngeom) if model.geom_bodyid[g] == body]:
        centre, half = aabb[g, :3], aabb[g, 3:]
        local = _box_corners(centre - half, centre + half)
        world = local @ np.array(data.geom_xmat[g]).reshape(3, 3).T + data.geom_xpos[g]
        points.append((world - origin) @ rot)
    pts = np.concatenate(points) if points else np.zeros((1, 3))
    return pts.min(axis=0), pts.max(axis=0), rot


def _collision_geoms(env: Any, name: str) -> list[int]:
    model = env.sim.model
    body = env.obj_body_id[name]
    return [g for g in range(model.ngeom) if model.geom_bodyid[g] == body and model.geom_contype[g] != 0]


def _rim_radius(env: Any, name: str) -> float:
    """Largest horizontal distance from the body origin to a collision-geom centre (a bowl's wall)."""
    data = env.sim.data
    origin = data.body_xpos[env.obj_body_id[name]]
    geoms = _collision_geoms(env, name)
    if not geoms:
        return 0.0
    return float(max(np.linalg.norm(data.geom_xpos[g][:2] - origin[:2]) for g in geoms))


def _axis_angle_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """World-frame axis-angle vector rotating `current` onto `target` (both 3x3 rotation matrices)."""
    r = target @ current.T
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-9:  # angle ~ pi: pick the axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(r) + 1.0) / 2.0, 0.0, None))
        norm = np.linalg.norm(axis)
    return axis / norm * angle


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class PickPlaceExpert:
    """Waypoint expert for "pick up A and place it on/in B" tasks.

    Args:
        obj: instance name of the object to move (LIBERO `obj_body_id` key).
        dest: instance name of the object/fixture to put it on.
        rng: source of the small per-episode variation (grasp side jitter, speeds); None = deterministic.
        max_speed: cap on the translational action magnitude (1 = 5 cm per step goal shift).
    """

    obj: str
    dest: str
    rng: np.random.Generator | None = None
    max_speed: float = 0.8
    phase: str = "start"
    phase_steps: int = 0
    _grasp: GraspSpec | None = None
    _dir: np.ndarray = field(default_factory=lambda: np.zeros(2))
    _rot_target: np.ndarray = field(default_factory=lambda: DOWN_ORIENTATION.copy())
    _hold_offset: np.ndarray | None = None
    _targets: dict = field(default_factory=dict)

    @classmethod
    def for_env(cls, env: Any, rng: np.random.Generator | None = None) -> PickPlaceExpert:
        """Build the expert from the LIBERO env's BDDL goal `(On|In obj dest)`; `env` is the robosuite env."""
        goal = env.parsed_problem["goal_state"]
        for pred in goal:
            if pred[0].lower() in ("on", "in") and len(pred) == 3:
                dest = pred[2]
                # "In x basket_1_contain_region"-style targets name a region of an object.
                for name in env.obj_body_id:
                    if dest.startswith(name):
                        dest = name
                        break
                return cls(obj=pred[1], dest=dest, rng=rng)
        raise ValueError(
            f"no (On|In obj dest) predicate in the goal {goal}; the scripted expert handles pick-and-place only"
        )

    # --- privileged state -------------------------------------------------------------------------------
    def _pos(self, env: Any, name: str) -> np.ndarray:
        return np.array(env.sim.data.body_xpos[env.obj_body_id[name]])

    def _eef(self, env: Any) -> tuple[np.ndarray, np.ndarray]:
        ctrl = env.robots[0].controller
        site = ctrl.eef_name
        sid = env.sim.model.site_name2id(site)
        return np.array(env.sim.data.site_xpos[sid]), np.array(env.sim.data.site_xmat[sid]).reshape(3, 3)

    def _clearance(self, env: Any, point: np.ndarray) -> float:
        """Distance from `point` to the nearest collision geom of any other body (geom centre minus its
        bounding radius, a conservative estimate); the table and the robot are ignored."""
        model, data = env.sim.model, env.sim.data
        own = env.obj_body_id[self.obj]
        best = 1.0
        for _name, body in env.obj_body_id.items():
            if body == own:
                continue
            for g in self._geoms_of(env, body):
                d = np.linalg.norm(data.geom_xpos[g] - point) - min(model.geom_rbound[g], 0.05)
                best = min(best, d)
        return float(best)

    def _geoms_of(self, env: Any, body: int) -> list[int]:
        cache = self._targets.setdefault("_geoms", {})
        if body not in cache:
            model = env.sim.model
            # the body and its descendants (fixtures such as cabinets are trees of bodies)
            bodies = {body}
            for b in range(model.nbody):
                parent = b
                while parent > 0:
                    if parent in bodies:
                        bodies.add(b)
                        break
                    parent = model.body_parentid[parent]
            cache[body] = [
                g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies and model.geom_contype[g] != 0
            ]
        return cache[body]

    def _choose_side(self, env: Any, center: np.ndarray, spec: GraspSpec) -> tuple[float, float, float]:
        """Grasp side for a rim grasp: (dx, dy) unit direction from the centre and the gripper yaw.

        Candidates are the +y/-y sides (fingers open along y, yaw 0) and the side facing the robot (-x,
        yaw pi/2); the one with the most clearance from other objects wins (ties favour -x, nearer the
        robot's base and within reach).
        """
        if spec.side_offset <= 0:
            return 0.0, 0.0, self._top_yaw(env, center, spec)
        candidates = [(0.0, 1.0, 0.0), (0.0, -1.0, 0.0), (-1.0, 0.0, np.pi / 2)]
        scores = []
        for dx, dy, _yaw in candidates:
            p = center + np.array([dx * spec.side_offset, dy * spec.side_offset, spec.height])
            clearance = min(self._clearance(env, p), self._clearance(env, p + np.array([0, 0, 0.05])))
            bonus = 0.01 if dx < 0 else 0.0
            scores.append(min(clearance, 0.06) + bonus)
        dx, dy, yaw = candidates[int(np.argmax(scores))]
        return dx, dy, yaw

    def _top_yaw(self, env: Any, center: np.ndarray, spec: GraspSpec) -> float:
        """Yaw of a top grasp: the short-axis yaw, or turned by up to 0.35 rad when that moves the hand
        housing (about 10 cm to each side along the finger axis) away from a neighbour it would land on
        (libero_object's cream cheese beside a can); only turns the fingers still span (<= 7 cm) are tried."""
        if spec.sides is None:
            return spec.yaw
        short, long = spec.sides
        grip = center + np.array([*spec.centre_offset, spec.height])
        best, best_score = spec.yaw, -np.inf
        for turn in (0.0, 0.2, -0.2, 0.35, -0.35):
            if short * abs(np.cos(turn)) + long * abs(np.sin(turn)) > MAX_SPAN:
                continue
            yaw = spec.yaw + turn
            fingers = np.array([-np.sin(yaw), np.cos(yaw), 0.0])  # the direction the fingers open along
            points = [grip + np.array([0, 0, HOUSING_HEIGHT]) + r * fingers for r in (-0.1, -0.06, 0.06, 0.1)]
            score = min(min(self._clearance(env, q) for q in points), 0.04) + (0.002 if turn == 0 else 0.0)
            if score > best_score:
                best, best_score = yaw, score
        return float(best)

    # --- control ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.phase, self.phase_steps = "start", 0
        self._grasp, self._hold_offset, self._targets = None, None, {}

    def _move(
        self, pos: np.ndarray, ori: np.ndarray, target: np.ndarray, speed: float, gripper: float
    ) -> np.ndarray:
        action = np.zeros(7)
        delta = (target - pos) / POS_SCALE
        norm = np.linalg.norm(delta)
        if norm > speed:
            delta *= speed / norm
        action[:3] = delta
        action[3:6] = np.clip(_axis_angle_error(self._rot_target, ori) / ROT_SCALE, -0.5, 0.5)
        action[6] = gripper
        return action

    def _next(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    def _stalled(self, pos: np.ndarray, axis: int, eps: float = 0.0015, steps: int = 6) -> bool:
        """True when the gripper moved less than `eps` along `axis` over the last `steps` steps."""
        hist = self._targets.setdefault("_hist", [])
        hist.append(float(pos[axis]))
        if len(hist) > steps:
            hist.pop(0)
            return abs(hist[-1] - hist[0]) < eps
        return False

    def _start(self, env: Any, pos: np.ndarray, ori: np.ndarray, obj: np.ndarray) -> None:
        self._grasp = grasp_spec_for(self.obj, env)
        dx, dy, yaw = self._choose_side(env, obj, self._grasp)
        if self.rng is not None and self._grasp.side_offset > 0:
            yaw += float(self.rng.uniform(-0.05, 0.05))
        self._dir = np.array([dx, dy])
        # The gripper is symmetric under a half turn: take the yaw nearest to the current one.
        current_yaw = np.arctan2(ori[1, 0], ori[0, 0]) - np.arctan2(
            DOWN_ORIENTATION[1, 0], DOWN_ORIENTATION[0, 0]
        )
        options = [yaw, yaw + np.pi, yaw - np.pi]
        yaw = min(options, key=lambda y: abs(np.angle(np.exp(1j * (y - current_yaw)))))
        self._rot_target = _yaw_matrix(yaw) @ DOWN_ORIENTATION

    def act(self, env: Any) -> np.ndarray:
        """One 7-D action in [-1, 1] for the current simulator state of `env` (the robosuite env)."""
        pos, ori = self._eef(env)
        obj = self._pos(env, self.obj)
        self.phase_steps += 1
        if self.phase == "start":
            self._start(env, pos, ori, obj)
            self._next("approach")
        g = self._grasp
        offset = np.array(
            [
                self._dir[0] * g.side_offset + g.centre_offset[0],
                self._dir[1] * g.side_offset + g.centre_offset[1],
                g.height,
            ]
        )
        grasp_point = obj + offset
        if self.phase == "approach":
            safe_z = max(grasp_point[2] + 0.10, min(pos[2], grasp_point[2] + 0.25))
            target = np.array([grasp_point[0], grasp_point[1], safe_z])
            rot_err = np.linalg.norm(_axis_angle_error(self._rot_target, ori))
            if (np.linalg.norm((target - pos)[:2]) < 0.01 and rot_err < 0.05) or self.phase_steps > 120:
                self._next("descend")
            return self._move(pos, ori, target, self.max_speed, -1.0)
        if self.phase == "descend":
            if (
                np.linalg.norm(grasp_point - pos) < 0.008
                or self.phase_steps > 80
                or (self.phase_steps > 10 and self._stalled(pos, 2))
            ):
                self._targets.pop("_hist", None)
                self._next("close")
            return self._move(pos, ori, grasp_point, 0.5, -1.0)
        if self.phase == "close":
            if self.phase_steps > 12:
                self._hold_offset = pos - obj
                # Carry high enough that the held object's bottom clears the destination's top by 6 cm
                # (a tall bottle would otherwise drag a basket along).
                obj_bottom = _world_z_range(env, self.obj)[0]
                dest_top = _world_z_range(env, self.dest)[1]
                self._targets["lift_z"] = max(
                    pos[2] + 0.12,
                    self._pos(env, self.dest)[2] + 0.25,
                    dest_top + (pos[2] - obj_bottom) + 0.06,
                )
                self._targets["dest"] = self._pos(env, self.dest)
                self._next("lift")
            return self._move(pos, ori, pos, 0.5, 1.0)
        # The destination where it was when the object was grasped: never chase a destination that moves.
        dest = self._targets["dest"]
        if self.phase == "lift":
            target = np.array([pos[0], pos[1], self._targets["lift_z"]])
            if abs(target[2] - pos[2]) < 0.02 or self.phase_steps > 60:
                self._next("carry")
            return self._move(pos, ori, target, self.max_speed, 1.0)
        # Servo the held object's position (not the gripper's) over the destination: corrects slip and swing.
        xy_target = pos[:2] + (dest[:2] - obj[:2])
        if self.phase == "carry":
            target = np.array([xy_target[0], xy_target[1], self._targets["lift_z"]])
            if (
                np.linalg.norm(dest[:2] - obj[:2]) < 0.012 and self.phase_steps > 5
            ) or self.phase_steps > 150:
                self._next("lower")
            return self._move(pos, ori, target, self.max_speed, 1.0)
        if self.phase == "lower":
            target = np.array([xy_target[0], xy_target[1], pos[2] - (obj[2] - dest[2]) + 0.03])
            if (
                obj[2] - dest[2] < 0.045
                or self.phase_steps > 100
                or (self.phase_steps > 10 and self._stalled(pos, 2))
            ):
                self._targets.pop("_hist", None)
                self._next("release")
            return self._move(pos, ori, target, 0.4, 1.0)
        if self.phase == "release":
            if self.phase_steps > 10:
                self._next("retreat")
            return self._move(pos, ori, pos, 0.5, -1.0)
        # retreat: straight up, gripper open
        target = np.array([pos[0], pos[1], self._targets.get("lift_z", pos[2] + 0.1)])
        return self._move(pos, ori, target, 0.5, -1.0)
