"""Scripted (non-learning) policies for agents outside the team.

Physical Deception (`mpe:simple_adversary_v3`): the adversary does not know which landmark is
the goal, so it guesses from the good agents: it heads for the landmark that is closest to any
good agent. The push is proportional to the offset (gain 2, clipped), so it moves at full
speed when far away and settles on the landmark instead of orbiting it. It reads only its own
observation, `[landmark rel. positions (2 per landmark), good agent rel. positions (2 each)]`,
with as many landmarks as good agents, and outputs an mpe2 continuous action
`[no_op, left, right, down, up]` in [0, 1].
"""

from __future__ import annotations

import numpy as np

_PUSH_GAIN = 2.0


def adversary_to_landmark_nearest_good_agent(observation: np.ndarray) -> np.ndarray:
    positions = np.asarray(observation, dtype=np.float64).reshape(-1, 2)
    num_landmarks = len(positions) // 2
    landmarks, good_agents = positions[:num_landmarks], positions[num_landmarks:]
    # distance of every landmark to its nearest good agent
    gaps = np.linalg.norm(landmarks[:, None, :] - good_agents[None, :, :], axis=-1).min(axis=1)
    target = landmarks[int(np.argmin(gaps))]  # relative to the adversary
    push_x, push_y = np.clip(_PUSH_GAIN * target, -1.0, 1.0)
    return np.array(
        [0.0, max(-push_x, 0.0), max(push_x, 0.0), max(-push_y, 0.0), max(push_y, 0.0)],
        dtype=np.float32,
    )
