"""`EnvConfig`: every protocol knob a LIBERO episode depends on, in one frozen dataclass.

Shared contract between `envs.libero.LiberoEnv`, `envs.runner` and `eval.protocols`. Defaults are the
ZipMo/ATM evaluation settings (ZIPMO_REFERENCE.md §7.4, PROTOCOLS.md §1 and §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SUITES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
ORIENTATIONS: tuple[str, ...] = ("raw", "flip_vertical", "rotate_180")
CAMERAS: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")
# render -> policy image resize: PIL bilinear, or OpenVLA's JPEG round trip + lanczos3 (envs/openvla_resize.py)
IMAGE_RESIZES: tuple[str, ...] = ("pil_bilinear", "openvla")
DUMMY_ACTION: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)


@dataclass(frozen=True)
class EnvConfig:
    """How one LIBERO task is built, reset and observed.

    Args:
        suite: LIBERO suite name (one of `SUITES`).
        task_id: task index in LIBERO benchmark order.
        image_size: render size (square) of every camera.
        policy_image_size: size the observation images are resized to for the policy (None: same as render).
        policy_image_resize: how: "pil_bilinear" (skipped when the sizes match) or "openvla" (OpenVLA's JPEG
            round trip + lanczos3 antialiased resize, `envs.openvla_resize`; always applied, as OpenVLA does).
        cameras: camera names in view order (view 0 = agentview for every published protocol).
        orientation: "flip_vertical" (ATM/ZipMo: rows reversed, upright), "raw" (robosuite's OpenGL
            upside-down image) or "rotate_180" (openvla/LeRobot family).
        settle_steps: dummy steps after `set_init_state`, inside reset, not counted in the episode.
        settle_action: the action used for those steps (gripper open).
        max_steps: policy steps before the episode is truncated (600 for every suite in ATM/ZipMo).
        render: False builds the env without cameras (state-only, ~10x faster; used by data collection).
    """

    suite: str = "libero_spatial"
    task_id: int = 0
    image_size: int = 128
    policy_image_size: int | None = None
    policy_image_resize: str = "pil_bilinear"
    cameras: tuple[str, ...] = CAMERAS
    orientation: str = "flip_vertical"
    settle_steps: int = 5
    settle_action: tuple[float, ...] = DUMMY_ACTION
    max_steps: int = 600
    render: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; valid suites: {', '.join(SUITES)}")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"unknown orientation {self.orientation!r}; valid: {', '.join(ORIENTATIONS)}")
        if self.policy_image_resize not in IMAGE_RESIZES:
            raise ValueError(
                f"unknown policy_image_resize {self.policy_image_resize!r}; valid: {', '.join(IMAGE_RESIZES)}"
            )
        if self.image_size <= 0 or (self.policy_image_size is not None and self.policy_image_size <= 0):
            raise ValueError(f"image sizes must be positive, got {self.image_size}, {self.policy_image_size}")
        if self.settle_steps < 0 or self.max_steps <= 0:
            raise ValueError(
                f"settle_steps >= 0 and max_steps > 0 required, got {self.settle_steps}, {self.max_steps}"
            )
        if len(self.settle_action) != 7:
            raise ValueError(f"settle_action must have 7 entries, got {len(self.settle_action)}")
